"""Measuring a PHI screen: identifiers of every HIPAA Safe Harbor kind planted into report text, then recall and
precision per kind.

`plant_identifiers` inserts, at sentence boundaries of a report, identifiers written the way pathology reports
write them (an upper-case "SURNAME, GIVEN" after "Patient Name:", "Pt:", signatures, ages over 89, dates in digits
and in words, MRN and accession variants, addresses, phone and fax numbers, e-mail, URLs, IP addresses, insurance
and device numbers) and returns the text with the span and kind of every plant. `score_screen` runs a detector
(``text -> findings``) over planted texts and over the same reports unplanted and counts, per kind:

* recall: planted identifiers whose every letter and digit lies inside some finding (a redaction would hide it
  whole); a finding of another kind still counts, as redaction hides it all the same;
* precision: findings that overlap a planted identifier, over all findings of that kind (planted and unplanted
  texts); every finding in an unplanted report is counted as false.

The planted values come from this module's own seeded lists (names, streets, cities), written for the purpose;
nothing is a real person. `SYNTHETIC_REPORTS` are short project-written reports for tests that run without the
real corpus.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from reports.phi_templates import TEMPLATES

PLANT_KINDS: tuple[str, ...] = ("name", "age", "date", "phone", "email", "url", "ip_address", "record_number",
                                "id_number", "address")

GIVEN = ("John", "Mary", "Robert", "Patricia", "Michael", "Linda", "William", "Barbara", "David", "Susan",
         "Richard", "Jessica", "Joseph", "Sarah", "Thomas", "Karen", "Charles", "Nancy", "Daniel", "Lisa", "Matthew",
         "Betty", "Anthony", "Dorothy", "Mark", "Sandra", "Donald", "Ashley", "Steven", "Kimberly", "Paul", "Donna",
         "Andrew", "Emily", "Joshua", "Michelle", "Kenneth", "Carol", "Kevin", "Amanda", "Brian", "Melissa",
         "George", "Deborah", "Rose", "Grace", "Hunter", "Wei", "Priya", "Olusegun", "Mei-Ling", "Jose", "Fatima",
         "Giovanni", "Aaliyah", "Dmitri", "Siobhan", "Kwame", "Hiroshi", "Ingrid")
SURNAME = ("Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
           "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
           "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
           "Walker", "Young", "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
           "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "O'Neil", "McDonald",
           "Garcia-Lopez", "Kowalski", "Okafor", "Patel", "Nakamura", "Schmidt", "Ivanova", "DeLuca", "Oyelaran",
           "Fitzgerald", "Bishop", "Wood", "Long", "Gray")
STREETS = ("Main", "Oak", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park", "Pine", "Walnut",
           "Highland", "Sunset", "Franklin", "Jefferson", "Lincoln", "Madison", "Willow", "Chestnut", "Spring")
STREET_TYPES = ("Street", "St.", "Avenue", "Ave", "Road", "Rd.", "Boulevard", "Blvd", "Drive", "Dr.", "Lane", "Way",
                "Court", "Place", "Terrace")
CITIES = (("Springfield", "IL", "Illinois"), ("Columbus", "OH", "Ohio"), ("Madison", "WI", "Wisconsin"),
          ("Portland", "OR", "Oregon"), ("Austin", "TX", "Texas"), ("Boston", "MA", "Massachusetts"),
          ("Rochester", "MN", "Minnesota"), ("Baltimore", "MD", "Maryland"), ("Nashville", "TN", "Tennessee"),
          ("Pittsburgh", "PA", "Pennsylvania"), ("San Diego", "CA", "California"), ("Ann Arbor", "MI", "Michigan"),
          ("Salt Lake City", "UT", "Utah"), ("Chapel Hill", "NC", "North Carolina"), ("Houston", "TX", "Texas"))
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth",
            "nineteenth", "twentieth", "twenty-first", "twenty-second", "twenty-third", "twenty-fourth",
            "twenty-fifth", "twenty-sixth", "twenty-seventh", "twenty-eighth")
TENS = {9: "ninety", 10: "one hundred"}
UNITS = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

@dataclass(frozen=True)
class Plant:
    """One planted identifier: ``text[start:end]`` of `kind`, made by `template`."""

    kind: str
    start: int
    end: int
    value: str
    template: str


@dataclass(frozen=True)
class PlantedText:
    """A report with identifiers planted in it (`plants`), and the report's id."""

    report_id: str
    text: str
    plants: tuple[Plant, ...]


@dataclass(frozen=True)
class Finding:
    """A detector's finding, reduced to what scoring needs."""

    kind: str
    start: int
    end: int


@dataclass
class KindScore:
    """Counts for one kind: planted, fully covered, partly covered; findings true and false."""

    planted: int = 0
    caught: int = 0
    partial: int = 0
    true_findings: int = 0
    false_findings: int = 0
    false_in_unplanted: int = 0
    missed: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.caught / self.planted if self.planted else float("nan")

    @property
    def precision(self) -> float:
        total = self.true_findings + self.false_findings
        return self.true_findings / total if total else float("nan")


# ---- values --------------------------------------------------------------------------------------------------------
def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _name(rng: random.Random, style: str) -> str:
    given, surname, middle = rng.choice(GIVEN), rng.choice(SURNAME), rng.choice("ABCDEFGHJKLMNPRSTW")
    out = style
    for key, value in (("GIVEN", given.upper()), ("SURNAME", surname.upper()), ("Given", given),
                       ("Surname", surname)):
        out = out.replace(key, value)
    return re.sub(r"\bM\b", middle, out)


def _age(rng: random.Random, style: str) -> str:
    age = rng.randint(90, 104)
    if style == "words":
        if age >= 100:
            return "one hundred" + (f"-and-{UNITS[age - 100]}" if age > 100 else "")
        return TENS[9] + (f"-{UNITS[age - 90]}" if age > 90 else "")
    return str(age)


def _date(rng: random.Random, style: str) -> str:
    y, m, d = rng.randint(1920, 2019), rng.randint(1, 12), rng.randint(1, 28)
    month = MONTHS[m - 1]
    suffix = "th" if 11 <= d <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return {
        "mm/dd/yyyy": f"{m:02d}/{d:02d}/{y}",
        "m/d/yyyy": f"{m}/{d}/{y}",
        "m/d/yy": f"{m}/{d}/{y % 100:02d}",
        "Month d, yyyy": f"{month} {d}, {y}",
        "d Month yyyy": f"{d} {month} {y}",
        "Month dth, yyyy": f"{month} {d}{suffix}, {y}",
        "dth of Month, yyyy": f"{d}{suffix} of {month}, {y}",
        "Month dth-words, yyyy": f"{month} {ORDINALS[d - 1]}, {y}",
        "dd-Mon-yyyy": f"{d:02d}-{month[:3]}-{y}",
        "Mon. d, yyyy": f"{month[:3]}. {d}, {y}",
        "Mon d yyyy": f"{month[:3]} {d} {y}",
        "yyyy-mm-dd": f"{y}-{m:02d}-{d:02d}",
        "Month yyyy": f"{month} {y}",
        "m.d.yyyy": f"{m}.{d}.{y}",
        "Mon-dd-yyyy": f"{month[:3]}-{d:02d}-{y}",
        "yyyy/mm/dd": f"{y}/{m:02d}/{d:02d}",
        "dd.mm.yyyy": f"{d:02d}.{m:02d}.{y}",
        "Month the dth, yyyy": f"{month} the {d}{suffix}, {y}",
        "d/m/yy": f"{d}/{m}/{y % 100:02d}",
        "Month d": f"{month} {d}",
        "dd Mon yyyy": f"{d:02d} {month[:3]} {y}",
        "mm-dd-yy": f"{m:02d}-{d:02d}-{y % 100:02d}",
    }[style]


def _phone(rng: random.Random, style: str) -> str:
    area = str(rng.randint(201, 989))
    number = str(rng.randint(200, 999)) + _digits(rng, 4)
    digits = iter(area + number)
    return "".join(next(digits) if ch == "d" else ch for ch in style)


def _email(rng: random.Random, style: str) -> str:
    given, surname = rng.choice(GIVEN).lower().replace("-", ""), rng.choice(SURNAME).lower().replace("'", "")
    user = {"first.last": f"{given}.{surname}", "flast": f"{given[0]}{surname}", "first_last": f"{given}_{surname}"}
    domain = rng.choice(("hospital.org", "med.example.edu", "mail.com", "health-system.net"))
    return f"{user[style]}@{domain}"


def _url(rng: random.Random, style: str) -> str:
    host = rng.choice(("mychart.example-health.org", "portal.univ-hospital.edu", "images.pathlab.com"))
    if style in ("https", "http"):
        return f"{style}://{host}/patient/{_digits(rng, 6)}"
    return f"www.{host.split('.', 1)[1]}"


def _ip(rng: random.Random, style: str) -> str:
    return ".".join(str(rng.randint(1, 254)) for _ in range(4))


def _record(rng: random.Random, style: str) -> str:
    if style.startswith("digits"):
        return _digits(rng, int(style[6:]))
    yy, yyyy = f"{rng.randint(0, 24):02d}", str(rng.randint(1995, 2024))
    out = style.replace("yyyy", yyyy).replace("yy", yy)
    out = re.sub(r"d", lambda _: rng.choice("0123456789"), out)
    out = out.replace("XX", rng.choice(("SP", "CY", "FS", "BM"))).replace("X", rng.choice("SCFBM"))
    return out.replace(" ", "")


def _id_number(rng: random.Random, style: str) -> str:
    if style == "vin":
        return "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ0123456789") for _ in range(11)) + _digits(rng, 6)
    out = re.sub(r"d", lambda _: rng.choice("0123456789"), style)
    return out.replace("ABC", rng.choice(("XGH", "QKM", "WZP"))).replace("AB", rng.choice(("HP", "MB"))).replace(
        "X", rng.choice("ABCDFGK"))


def _address(rng: random.Random, style: str) -> str:
    city, st, state = rng.choice(CITIES)
    street = f"{rng.randint(2, 9899)} {rng.choice(('', 'N. ', 'S. ', 'West '))}{rng.choice(STREETS)} " \
             f"{rng.choice(STREET_TYPES)}"
    zip5 = _digits(rng, 5)
    return {"street": street, "street unit": f"{street}, Apt {rng.randint(1, 40)}{rng.choice('ABCD')}",
            "city ST zip": f"{city}, {st} {zip5}", "city State zip": f"{city}, {state} {zip5}",
            "po box": f"P.O. Box {rng.randint(10, 99999)}", "street NW": f"{street} NW",
            "city ST zip no comma": f"{city} {st} {zip5}",
            "county": f"{rng.choice(STREETS)} County", "zip": zip5}[style]


_VALUES: dict[str, Callable[[random.Random, str], str]] = {
    "name": _name, "age": _age, "date": _date, "phone": _phone, "email": _email, "url": _url, "ip_address": _ip,
    "record_number": _record, "id_number": _id_number, "address": _address,
}
_SLOT = re.compile(r"\{(\w+):([^}]+)\}")


def render(template: str, rng: random.Random) -> tuple[str, list[tuple[str, int, int, str]]]:
    """A template's text with its slots filled, and (kind, start, end, value) of each identifier in it."""
    out: list[str] = []
    spans: list[tuple[str, int, int, str]] = []
    pos, last = 0, 0
    for m in _SLOT.finditer(template):
        out.append(template[last:m.start()])
        pos += m.start() - last
        kind, style = m.group(1), m.group(2)
        value = _VALUES[kind](rng, style)
        spans.append((kind, pos, pos + len(value), value))
        out.append(value)
        pos += len(value)
        last = m.end()
    out.append(template[last:])
    return "".join(out), spans


_BOUNDARY = re.compile(r"(?<=[.:;])\s+(?=[A-Z0-9])")


def plant_identifiers(text: str, templates: Sequence[str], rng: random.Random, report_id: str = "report"
                      ) -> PlantedText:
    """Insert each template (filled) at a different sentence boundary of `text` (seeded), as its own sentence."""
    bounds = [m.end() for m in _BOUNDARY.finditer(text)] or [len(text)]
    where = sorted(rng.sample(bounds, len(templates)) if len(bounds) >= len(templates)
                   else [rng.choice(bounds) for _ in templates])
    pieces: list[str] = []
    plants: list[Plant] = []
    last, offset = 0, 0
    for at, template in zip(where, templates):
        filled, spans = render(template, rng)
        sentence = filled if filled.endswith((".", ":")) else filled + "."
        pieces.append(text[last:at])
        offset += at - last
        plants += [Plant(kind, offset + s, offset + e, value, template) for kind, s, e, value in spans]
        pieces.append(sentence + " ")
        offset += len(sentence) + 1
        last = at
    pieces.append(text[last:])
    out = "".join(pieces)
    for p in plants:
        assert out[p.start:p.end] == p.value, (p, out[p.start:p.end])
    return PlantedText(report_id, out, tuple(plants))


def planted_corpus(texts: Sequence[tuple[str, str]], *, seed: int = 0, per_report: int = 4,
                   templates: dict[str, tuple[str, ...]] | None = None) -> list[PlantedText]:
    """Every template of every kind planted at least once across `texts` ((id, text) pairs), `per_report` per text.

    The templates (default `TEMPLATES`; `HOLDOUT_TEMPLATES` for formats the rules were not tuned on) are dealt
    round-robin over the reports (shuffled with `seed`), so a corpus of N reports holds N · per_report plants and
    every template appears about equally often.
    """
    rng = random.Random(seed)
    templates = TEMPLATES if templates is None else templates
    deck = [t for kind in PLANT_KINDS for t in templates.get(kind, ())]
    order: list[str] = []
    while len(order) < len(texts) * per_report:
        rng.shuffle(deck)
        order += deck
    return [plant_identifiers(text, order[i * per_report:(i + 1) * per_report], random.Random(f"{seed}-{i}"), rid)
            for i, (rid, text) in enumerate(texts)]


# ---- scoring -------------------------------------------------------------------------------------------------------
def _covered(plant: Plant, text: str, findings: Sequence[Finding]) -> tuple[bool, bool]:
    """(fully, partly): whether every / some letter or digit of the plant lies inside a finding."""
    chars = [i for i in range(plant.start, plant.end) if text[i].isalnum()]
    inside = [any(f.start <= i < f.end for f in findings) for i in chars]
    return all(inside), any(inside)


def score_screen(detector: Callable[[str], Iterable[Finding]], planted: Sequence[PlantedText],
                 unplanted: Sequence[tuple[str, str]] = ()) -> dict[str, KindScore]:
    """Per-kind recall and precision of `detector` (see the module docstring); key ``"all"`` sums every kind.

    Recall is counted per planted kind; precision per the detector's kind (a finding overlapping any plant is true).
    """
    scores: dict[str, KindScore] = {}

    def kind_score(kind: str) -> KindScore:
        return scores.setdefault(kind, KindScore())

    for item in planted:
        findings = list(detector(item.text))
        for p in item.plants:
            full, part = _covered(p, item.text, findings)
            s = kind_score(p.kind)
            s.planted += 1
            s.caught += full
            s.partial += part and not full
            if not full:
                s.missed.append(f"{p.template} -> {p.value!r}")
        for f in findings:
            hit = any(f.start < p.end and p.start < f.end for p in item.plants)
            s = kind_score(f.kind)
            s.true_findings += hit
            s.false_findings += not hit
    for _, text in unplanted:
        for f in detector(text):
            s = kind_score(f.kind)
            s.false_findings += 1
            s.false_in_unplanted += 1
    total = KindScore()
    for s in scores.values():
        for name in ("planted", "caught", "partial", "true_findings", "false_findings", "false_in_unplanted"):
            setattr(total, name, getattr(total, name) + getattr(s, name))
    scores["all"] = total
    return scores


def format_table(scores: dict[str, KindScore], title: str) -> str:
    """The per-kind table the benchmark prints."""
    lines = [title, f"{'kind':<14} {'planted':>7} {'caught':>6} {'partial':>7} {'recall':>7} {'findings':>8} "
                    f"{'false':>6} {'(unplanted)':>11} {'precision':>9}"]
    kinds = [k for k in (*PLANT_KINDS, *sorted(set(scores) - set(PLANT_KINDS) - {"all"}), "all") if k in scores]
    for kind in kinds:
        s = scores[kind]
        lines.append(f"{kind:<14} {s.planted:>7} {s.caught:>6} {s.partial:>7} {s.recall:>7.3f} "
                     f"{s.true_findings + s.false_findings:>8} {s.false_findings:>6} {s.false_in_unplanted:>11} "
                     f"{s.precision:>9.3f}")
    return "\n".join(lines)


# ---- project-written reports (no patient, no real text) ------------------------------------------------------------
SYNTHETIC_REPORTS: tuple[tuple[str, str], ...] = (
    ("synthetic-breast", "FINAL DIAGNOSIS: Left breast, core needle biopsy: Invasive ductal carcinoma, Nottingham "
     "grade 2 (tubules 3, nuclei 2, mitoses 1). Ductal carcinoma in situ, solid type, is present. Lymphovascular "
     "invasion is not identified. Estrogen receptor: positive (90%, strong). Progesterone receptor: positive (40%, "
     "moderate). HER2 by immunohistochemistry: 1+ (negative). Ki-67: 15%. GROSS DESCRIPTION: Received in formalin "
     "labeled with the patient's name and \"left breast 2 o'clock\" are four tan cores, 1.2 to 1.8 cm, submitted "
     "entirely in one cassette. Cold ischemia time less than 1 hour. Comment: Results were discussed with the "
     "referring clinician."),
    ("synthetic-colon", "SPECIMEN: Sigmoid colon, resection. DIAGNOSIS: Adenocarcinoma, moderately differentiated, "
     "invading through the muscularis propria into pericolorectal tissue (pT3). Margins: proximal, distal and "
     "radial margins are negative; closest radial margin 0.8 cm. Lymph nodes: 2 of 17 positive for metastatic "
     "carcinoma (pN1b). Tumor deposits: not identified. Perineural invasion: present. Mismatch repair proteins "
     "MLH1, PMS2, MSH2 and MSH6: intact nuclear expression. Clinical history: Obstructing mass on colonoscopy. "
     "Gross: A 24 cm segment of colon with an annular, ulcerated mass 4.5 x 3.8 cm, 10 cm from the distal margin."),
    ("synthetic-lung", "Lung, right upper lobe, lobectomy: Invasive adenocarcinoma, acinar predominant (60%), with "
     "lepidic (30%) and solid (10%) components. Tumor size 2.7 cm. Visceral pleural invasion: not identified. "
     "Bronchial margin: free of tumor. Lymph nodes: 0 of 9 involved. AJCC 8th edition stage pT1c pN0. Frozen "
     "section: Malignant, favor adenocarcinoma. Immunohistochemistry: TTF-1 positive, napsin A positive, p40 "
     "negative. PD-L1 (22C3) tumor proportion score 5%. Microscopic description: The tumor consists of glands "
     "lined by atypical columnar cells with enlarged nuclei and prominent nucleoli."),
    ("synthetic-prostate", "Prostate and seminal vesicles, radical prostatectomy: Prostatic adenocarcinoma, Gleason "
     "score 4 + 3 = 7 (Grade Group 3), tertiary pattern 5 less than 5%. Tumor involves both lobes, estimated 20% "
     "of the gland. Extraprostatic extension: focal, right posterolateral. Seminal vesicle invasion: absent. "
     "Surgical margins: negative. Pelvic lymph nodes: 0 of 6 positive. Pathologic stage pT3a pN0. Gross: The "
     "prostate weighs 48 grams and measures 4.6 x 4.0 x 3.5 cm. The specimen is inked and serially sectioned."),
    ("synthetic-kidney", "Kidney, left, radical nephrectomy: Clear cell renal cell carcinoma, WHO/ISUP grade 3, "
     "6.1 cm, confined to the kidney. Renal sinus fat invasion: not identified. Renal vein: free of tumor. "
     "Sarcomatoid features: absent. Necrosis: present, 10%. Adrenal gland: uninvolved. Margins: negative. "
     "Non-neoplastic kidney: mild arterionephrosclerosis. Summary of sections: A1-A8 tumor, B1 renal vein, "
     "C1 adrenal gland. Comment: Case reviewed at intradepartmental consensus conference."),
    ("synthetic-skin", "Skin, back, excision: Malignant melanoma, superficial spreading type. Breslow thickness "
     "1.4 mm. Clark level IV. Ulceration: absent. Mitotic rate: 3 per square millimeter. Microsatellites: not "
     "identified. Regression: present, less than 75%. Peripheral and deep margins: negative; closest peripheral "
     "margin 6 mm. Tumor infiltrating lymphocytes: non-brisk. Immunohistochemistry: SOX10 and Melan-A positive "
     "in tumor cells. History: Changing pigmented lesion. Gross: An ellipse of skin 5.2 x 2.1 cm."),
)
