"""Rule-based screening for protected health information (PHI) before a report reaches a model or a file.

Kinds found: ``name``, ``date``, ``phone``, ``email``, ``record_number`` (MRN, accession, case, account numbers),
``id_number`` (SSN-shaped and long digit runs) and ``address`` (street addresses, PO boxes, state + ZIP).
Redaction marks already in a corpus (``XXX``, ``[REDACTED]``, ``<Resident Signature>``, ``***``, ``____`` and our
own ``[REDACTED:KIND]`` placeholders) are recognised and never flagged.

Things that look like identifiers but are not are left alone: TCGA barcodes (public de-identified ids), specimen
part labels (``A1``, ``Part 18``), measurements, AJCC/WHO versions, CPT and SNOMED codes, checklist effective dates.

Policies (`PhiPolicy`): ``refuse`` (default) raises `PhiFoundError` naming each finding's kind and span;
``redact`` replaces each finding by a visible ``[REDACTED:KIND]`` placeholder; ``allow`` (explicit) passes the
text through and still reports the findings.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PhiPolicy = Literal["refuse", "redact", "allow"]
PHI_POLICIES: tuple[str, ...] = ("refuse", "redact", "allow")
PHI_KINDS: tuple[str, ...] = ("name", "age", "date", "phone", "email", "url", "ip_address", "record_number", "id_number",
                               "address")


@dataclass(frozen=True)
class PhiFinding:
    """One likely identifier: `text[start:end]` of kind `kind`, found by rule `rule`."""

    kind: str
    start: int
    end: int
    text: str
    rule: str

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "text": self.text, "rule": self.rule}

    def describe(self) -> str:
        """Kind and span, without the identifier itself (safe for logs)."""
        return f"{self.kind} at [{self.start}:{self.end}] ({self.end - self.start} chars, rule {self.rule})"


@dataclass(frozen=True)
class RedactionMark:
    """A redaction already present in the source text (recognised, not flagged)."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class PhiScreen:
    """The result of `apply_phi_policy`: the text to use, the findings and the marks already present."""

    text: str
    policy: str
    findings: tuple[PhiFinding, ...]
    marks: tuple[RedactionMark, ...]


class PhiFoundError(ValueError):
    """Raised by the ``refuse`` policy; `findings` holds what was found."""

    def __init__(self, findings: Iterable[PhiFinding], where: str = "report") -> None:
        self.findings = tuple(findings)
        listed = "; ".join(f.describe() for f in self.findings[:10])
        more = f"; and {len(self.findings) - 10} more" if len(self.findings) > 10 else ""
        super().__init__(
            f"{where} likely holds PHI ({len(self.findings)} finding(s): {listed}{more}). The default policy "
            f"'refuse' stops here; use policy 'redact' to replace them with [REDACTED:KIND] placeholders, or "
            f"'allow' if the text is known to be de-identified"
        )


# ---- redaction marks already in a corpus -----------------------------------------------------------------------

_MARKS = re.compile(
    r"\b[Xx]{3,}\b"  # XXX, xxxxxxxx
    r"|\*{3,}|_{3,}|#{3,}"
    r"|\[(?:REDACTED|redacted|Redacted|removed|REMOVED|PHI|de-?identified)[^\]\n]{0,40}\]"
    r"|\[(?:NAME|DATE|MRN|ADDRESS|PHONE|EMAIL|ID|PATIENT|DOCTOR|HOSPITAL|LOCATION)[^\]\n]{0,20}\]"
    r"|<[A-Z][A-Za-z ]{0,40}(?:Signature|Name|Date|Redacted|Number|Address)>"
)

# ---- detectors ---------------------------------------------------------------------------------------------------

_MONTH_NAMES = ("January February March April May June July August September October November December").split()
_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
_FULL_MONTHS = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_ORDINAL_WORDS = (r"(?:(?:twenty|thirty)-)?(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)|tenth|"
                  r"eleventh|twelfth|thirteenth|fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|"
                  r"twentieth|thirtieth")
_DAY = r"(?:[0-3]?\d(?:st|nd|rd|th)?)"
_YEAR = r"(?:1[89]|20)\d{2}"

# Words that follow a title or a role in pathology reports but are not names: function words, report structure,
# roles, specimen words. (A name is also refused when it has digits or a common English suffix, see _plausible.)
_NOT_NAMES = frozenset("""
first last my who whom your his her their our light microscopy release status lung cancer registry operation
histologic histology source special deeper approximately carcinoma carcinomas campus working draft signature
also received performed operator addendum attestation results result procedure findings impression summary
sample samples biopsy excision resection immunohistochemistry stain stains stained positive negative
mostly synoptic endometrial benign malignant grade stage type size site sex age male female patient patients path
surg case cases the a an and or of for in on at to by with from this that these those see per is was are be has
have had not no as if it its he she they we i all any some each both after before during under over into
resident attending pathologist pathologists pathology physician physicians surgeon staff fellow report reports
block blocks gross frozen final diagnosis diagnoses comment comments note notes microscopic description
specimen specimens clinical history date dates time signed signature electronically dictated reviewed verified
slide slides section sections department laboratory lab hospital center clinic medical university office
surgery surgical service unit left right tumor tumors tissue margin margins lymph node nodes part parts pre post
operative intraoperative consultation unknown none other mr mrs ms dr md phd do pa rn name names information info
id number no nbr location locations label here narr chart consent survival provider providers requesting
referring ordering consulting senior junior pager phone fax contacted concurs agrees notified called discussed
who performed procedure cassette cassettes summary deeper sections level levels nurse bed spec loc tloc
specimen collected obtained admit admitted discharge report page pages continued authorising authorizing
authorized approved transcribed transcription dictation prosector grossed grossing verified copy cc
female male man woman boy girl sex gender race asian hispanic caucasian
year years old aged age ages y o yo history dob mrn acc accession surgical pathologic diagnostic amended
test tests testing performed additional addenda responsible phy physic team teams services doctor doctors ward wards doc docs
comment confirm confirms confirmed reviewed review listed below above following whose within
ink inked margin designated designating labeled labelled received fresh formalin container
xr ct mri pet us fs fsa frozen touch prep preps smear smears cytology washings fluid fluids
upper lower middle anterior posterior lateral medial distal proximal superior inferior
""".split())
_NOT_NAME_PREFIXES = frozenset(w[:k] for w in _NOT_NAMES for k in range(5, len(w)))
_STATES = ("AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
           "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC").split()
_STATE_NAMES = ("Alabama|Alaska|Arizona|Arkansas|California|Colorado|Connecticut|Delaware|Florida|Georgia|Hawaii|"
                "Idaho|Illinois|Indiana|Iowa|Kansas|Kentucky|Louisiana|Maine|Maryland|Massachusetts|Michigan|"
                "Minnesota|Mississippi|Missouri|Montana|Nebraska|Nevada|New Hampshire|New Jersey|New Mexico|"
                "New York|North Carolina|North Dakota|Ohio|Oklahoma|Oregon|Pennsylvania|Rhode Island|"
                "South Carolina|South Dakota|Tennessee|Texas|Utah|Vermont|Virginia|Washington|West Virginia|"
                "Wisconsin|Wyoming")
# A name word in title case ("O'Neil", "McDonald", "Mei-Ling") or upper case ("O'NEIL", "GARCIA-LOPEZ").
_TITLE = r"(?:[A-Z](?:'[A-Z])?[a-z]+(?:[A-Z][a-z]+)?(?:-[A-Z][a-z]+)?)"
_UPPER = r"(?:[A-Z](?:'[A-Z])?[A-Z]+(?:-[A-Z]{2,})?)"
_INITIAL = r"(?:[A-Z]\.?)"
_NAME = _TITLE  # kept for the degree rule
# Names as labelled fields write them: "SMITH, JOHN A.", "Smith, John", "JOHN SMITH", "John A. Smith", "Smith".
_LABELLED_NAME = (rf"(?:{_UPPER},\s?{_UPPER}(?:\s{_INITIAL})?(?![\w-])|{_TITLE},\s?{_TITLE}(?:\s{_INITIAL})?(?![\w-])|"
                  rf"{_UPPER}(?:\s{_INITIAL})?\s{_UPPER}(?![\w-])|{_TITLE}(?:\s{_INITIAL}\.?)?\s{_TITLE}(?![\w-])|"
                  rf"{_TITLE}(?![\w-])|{_UPPER}(?![\w-]))")
# Fields whose value is a person's name (a colon after the label makes it a field).
_NAME_FIELD = (r"(?:(?:Patient(?:'s)?|Pt\.?|PATIENT|PT)\s+(?:Full\s+)?(?:Name|NAME)|Name\s+of\s+(?:the\s+)?[Pp]atient|"
               r"(?:Last|LAST|First|FIRST|Middle|MIDDLE|Family|FAMILY|Given|GIVEN|Sur)\s*(?:Name|NAME)|"
               r"(?:Ordered|ORDERED|Submitted|SUBMITTED|Requested|REQUESTED|Collected|COLLECTED)\s+(?:by|BY)|"
               r"Name|NAME|Patient|PATIENT|Pt\.?|PT|"
               r"(?:Attending|Referring|Ordering|Requesting|Consulting|Submitting)\s+(?:Pathologist|Physician|"
               r"Doctor|Provider|Surgeon|Clinician)|Attending|Resident(?:\s+Physician)?|Pathologist|Surgeon|"
               r"Physician|Clinician|Provider|(?:Electronically\s+)?[Ss]igned(?:\s+[Oo]ut)?\s+[Bb]y|Dictated\s+by|"
               r"Verified\s+by|Reviewed\s+by|Transcribed\s+by|Grossed\s+by|Prosector|Cc|CC|cc|Copy\s+to)")
_ROLE_NO_COLON = (r"(?:(?:Electronically\s+)?[Ss]igned(?:\s+[Oo]ut)?\s+by|Dictated\s+by|Verified\s+by|Reviewed\s+by|"
                  r"(?:Reviewed|Discussed|Consulted)\s+with|(?:Ordered|Submitted|Requested|Referred)\s+by|"
                  r"Transcribed\s+by|Grossed\s+by|Copy\s+to|Patient\s+Name)")
_AGE_WORDS = (r"(?:ninety(?:-(?:one|two|three|four|five|six|seven|eight|nine))?|one[- ]hundred(?:[- ](?:and[- ])?"
              r"(?:one|two|three|four|five|six|seven|eight|nine|ten))?)")
_AGE_NUMBER = r"(?:9\d|1[01]\d)"

_DETECTORS: list[tuple[str, str, re.Pattern[str], int]] = [
    # (kind, rule name, pattern, group holding the identifier (0 = whole match))
    ("email", "email", re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), 0),
    ("url", "url", re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[\w/]"), 0),
    ("ip_address", "IPv4 address", re.compile(
        r"(?<![\w.])(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}(?!\w|\.\d)"), 0),
    ("phone", "phone", re.compile(
        r"(?<![\w./-])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ ./-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)"
        r"|(?i:\b(?:tel(?:ephone)?|phone|fax|pager|ph)\b\.?\s*(?:no\.?|number|#)?\s*:?\s*)"
        r"((?:\+?1[ .-]?)?\(?\d[\d .()-]{6,}\d)"), 0),
    ("id_number", "ssn", re.compile(r"(?<![\w.-])\d{3}-\d{2}-\d{4}(?![\w-])"), 0),
    ("id_number", "labelled id number", re.compile(
        r"(?i:\b(?:SSN|social\s+security\s*(?:no\.?|number|#)?|member\s*(?:id|no\.?|number|#)|"
        r"(?:health\s+plan|insurance|beneficiary|policy|subscriber|group|medicaid|medicare)\s*"
        r"(?:beneficiary\s+)?(?:policy\s+)?(?:id|no\.?|number|#)|licen[cs]e\s*(?:no\.?|number|#)|"
        r"certificate\s*(?:no\.?|number|#)|serial\s*(?:no\.?|number|#)?|device\s*(?:id|no\.?|number|#)|VIN|"
        r"DL\s*(?:#|no\.?|number)|driver'?s?\s+licen[cs]e\s*(?:no\.?|number|#)?|passport\s*(?:no\.?|number|#)?|"
        r"vehicle\s+(?:id|identification)\s*(?:no\.?|number|#)?)\s*[:#]?\s*)"
        r"((?=(?:[A-Z-]*\d){3})[A-Z0-9][A-Z0-9-]*(?: \d{2,4}){0,2})"), 1),
    ("record_number", "labelled record number", re.compile(
        r"(?i:\b(?:MRN|MR\s?#|med(?:ical)?\s+rec(?:ord)?\s*(?:no\.?|number|#)|acc(?:ession)?\.?\s*(?:no\.?|number|#)?|"
        r"case\s*(?:no\.?|number|#)?|(?:surgical\s+)?path(?:ology)?\s*(?:no\.?|number|#)|"
        r"specimen\s*(?:id|no\.?|number|#)|account\s*(?:no\.?|number|#)|patient\s*(?:id|no\.?|number|#)|"
        r"lab\s*(?:no\.?|number|#)|chart\s*(?:no\.?|number|#)|FIN|encounter\s*(?:id|no\.?|number|#)?|"
        r"visit\s*(?:id|no\.?|number|#)|hospital\s*(?:id|no\.?|number|#)|unit\s*(?:no\.?|number|#))\s*[:#]\s*)"
        r"([A-Z]{0,4}[- ]?\d[\dA-Z-]{3,})"), 1),
    ("record_number", "accession number", re.compile(
        r"(?<![\w-])[A-Z]{1,3}-?(?:19|20)?\d{2}-\d{3,7}(?![\w-])|(?<![\w-])\d{2}-[A-Z]{1,3}-\d{3,7}(?![\w-])"), 0),
    ("id_number", "long digit run", re.compile(r"(?<![\w.,/-])\d{7,}(?![\w,/-]|\.\d)"), 0),
    ("date", "numeric date", re.compile(
        r"(?<![\w./-])(\d{1,2})([/.-])(\d{1,2})\2(\d{4}|\d{2})(?![\w/]|\.\d|-\d)"), 0),
    ("date", "ISO date", re.compile(r"(?<![\w/.-])(?:19|20)\d{2}([/.-])[01]?\d\1[0-3]?\d(?![\w/-]|\.\d)"), 0),
    ("date", "written date", re.compile(
        rf"\b(?:{_MONTHS}\.?(?:[\s,/-]+the)?[\s,/-]+(?:{_DAY}|{_ORDINAL_WORDS})[\s,./-]+(?:{_YEAR}|\d{{2}})|"
        rf"(?:the\s+)?(?:{_DAY}|{_ORDINAL_WORDS})(?:\s+of)?[\s,/-]+{_MONTHS}\.?[\s,./-]+(?:{_YEAR}|\d{{2}}))(?![\w/-])"), 0),
    ("date", "month and year", re.compile(rf"\b{_FULL_MONTHS},?\s+{_YEAR}\b"), 0),
    ("date", "month and day", re.compile(
        rf"\b{_FULL_MONTHS}\s+(?:the\s+)?(?:[0-3]?\d(?:st|nd|rd|th)?|{_ORDINAL_WORDS})(?![\w/-]|\.\d)"), 0),
    ("age", "age over 89", re.compile(
        rf"(?i:\b(?:{_AGE_NUMBER}|{_AGE_WORDS})\s*-?\s*(?:years?|yrs?|y)\.?\s*-?\s*(?:old|o\.?)(?![a-z])"
        rf"|(?<!\d)({_AGE_NUMBER})\s*(?:y/?o|y\.o\.?|yo|yrs?)(?![a-z])"
        rf"|\bage[sd]?\b[^.\d\n]{{0,24}}?(?<!\d)({_AGE_NUMBER})(?![\d%]|\.\d)"
        rf"|\b(?:of|at)\s+({_AGE_NUMBER})\s+years\b|\b({_AGE_NUMBER})\s+years\s+of\s+age\b"
        rf"|\baged\s+({_AGE_WORDS})\b)"), 0),
    ("name", "title + name", re.compile(
        rf"\b(?:Dr|DR|Drs|Doctor|Mr|Mrs|MRS|Ms|Miss|Prof)\.?\s+((?:{_TITLE}\s+)?(?:{_INITIAL}\.?\s+)?{_TITLE}|{_UPPER})(?!\w)"), 1),
    ("name", "name field", re.compile(
        rf"\b{_NAME_FIELD}(?:\s*\([^()\n]{{1,30}}\))?\s*:\s*(?:Dr\.?\s+)?({_LABELLED_NAME})"), 1),
    ("name", "given name + surname", re.compile(rf"\b(?=({_TITLE}\s(?:{_INITIAL}\.?\s)?{_TITLE})(?!\w))"), 1),
    ("name", "role + name", re.compile(rf"\b{_ROLE_NO_COLON}\s+(?:Dr\.?\s+)?({_TITLE}(?:\s{_INITIAL}\.?)?\s{_TITLE})"), 1),
    ("name", "name + degree", re.compile(
        rf"\b((?:{_TITLE}\s+)(?:{_INITIAL}\.?\s+)?{_TITLE}),?\s+(?:M\.D\.|MD|D\.O\.|DO|Ph\.D\.|PhD|MBBS|FRCPC)\b"), 1),
    ("name", "name + age", re.compile(r"(?:,\s+(?:is\s+)?an?|\s+is\s+an?)\s+\d{1,3}[- ](?:year|yr)"), -1),
    ("name", "the patient, name", re.compile(rf"\b[Tt]he\s+patient,\s+({_TITLE}(?:\s{_INITIAL}\.?)?\s{_TITLE}),"), 1),
    ("name", "upper-case name + record", re.compile(r"(?<=[\w.])\s*[(,]?\s*(?:MRN|MR#|DOB|Acc(?:ession)?\b|Med Rec)"), -1),
    ("name", "labelled with the name", re.compile(
        rf"(?i:patient(?:'s)?\s+name)[,:]?\s*(?:of\s+)?[\"']({_UPPER},\s?{_UPPER}(?:\s{_INITIAL})?|"
        rf"{_TITLE}(?:\s{_INITIAL}\.?)?\s{_TITLE}|{_TITLE},\s?{_TITLE})[\"']"), 1),
    ("address", "street address", re.compile(
        r"\b\d{1,6}\s+(?:[NSEW]\.?\s+|North\s+|South\s+|East\s+|West\s+)?(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|"
        r"Road|Rd|Boulevard|Blvd|Drive|Dr|Lane|Ln|Way|Court|Ct|Place|Pl|Parkway|Pkwy|Highway|Hwy|Terrace|Circle)\b\.?"
        r"(?:\s(?:NW|NE|SW|SE|N|S|E|W)\b)?(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[\w-]+)?(?!\s*\d)"), 0),
    ("address", "PO box", re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d+\b", re.IGNORECASE), 0),
    ("address", "labelled ZIP code", re.compile(r"(?i:\b(?:zip|postal)\s*(?:code)?\s*[:#]?\s*)(\d{5}(?:-\d{4})?)\b"), 1),
    ("address", "county", re.compile(r"\b((?:[A-Z][a-z]+\s){1,2}County)\b"), 1),
    ("address", "city, state + ZIP", re.compile(
        rf"\b(?:{'|'.join(_STATES)}|{_STATE_NAMES}),?\s+\d{{5}}(?:-\d{{4}})?\b"), 0),
]

# Rules whose identifier lies just before the match: the text before it must end with this pattern, whose group 1
# is the identifier (group -1 in _DETECTORS); for "city, state + ZIP" the city joins the finding when present.
_LEFT: dict[str, re.Pattern[str]] = {
    "name + age": re.compile(rf"\b({_TITLE}(?:\s{_INITIAL}\.?)?\s{_TITLE})$"),
    "upper-case name + record": re.compile(rf"(?:^|[.:;\"]\s)({_UPPER},\s?{_UPPER}(?:\s{_INITIAL}\.?)?)$"),
    "city, state + ZIP": re.compile(r"\b((?:[A-Z][a-z]+\s){0,2}[A-Z][a-z]+,?\s*)$"),
}
_LEFT_REACH = 60

# Look-alikes that are never flagged.
_TCGA_BARCODE = re.compile(r"\bTCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(?:-[A-Z0-9-]+)?\b")
_CPT = re.compile(r"^[A-Z]{1,3}-?\d{2}-88\d{3}$")  # "P16-88342": an antibody + its CPT code
_EFFECTIVE_DATE = re.compile(r"(?i:effective|revised|version|edition|updated|copyright|protocol|ajcc|released?)"
                             r"\W{0,3}\s*$")


def find_redaction_marks(text: str) -> list[RedactionMark]:
    """Redaction marks already in `text` (XXX, [REDACTED], <Resident Signature>, ***, ...)."""
    return [RedactionMark(m.start(), m.end(), m.group()) for m in _MARKS.finditer(text)]


def find_phi(text: str) -> list[PhiFinding]:
    """Likely identifiers in `text`, sorted by position, overlaps merged (the longer finding wins).

    Spans that overlap a redaction mark or a TCGA barcode are not reported.
    """
    protected = [(m.start, m.end) for m in find_redaction_marks(text)]
    protected += [(m.start(), m.end()) for m in _TCGA_BARCODE.finditer(text)]
    lower_words = frozenset(re.findall(r"\b[a-z][a-z'-]+\b", text))
    found: list[PhiFinding] = []
    for kind, rule, pattern, group in _DETECTORS:
        gate = _GATES.get(rule)
        if gate is not None and not gate.search(text):
            continue
        left = _LEFT.get(rule)
        for m in pattern.finditer(text):
            if left is not None:
                before = left.search(text, max(0, m.start() - _LEFT_REACH), m.start())
                if group == -1:  # the identifier is the text just before the match
                    if before is None:
                        continue
                    start, end = before.span(1)
                else:  # the match is the identifier, widened leftwards when the pattern is there
                    start, end = (before.start(1) if before else m.start()), m.end()
            else:
                g = group if group and m.group(group) is not None else 0
                start, end = m.span(g)
            value = text[start:end].rstrip(" ,.;:") if kind not in ("name", "address") else text[start:end].rstrip(" ,;:")
            if kind == "name" and value.endswith(".") and not re.search(r"\b[A-Z]\.$", value):
                value = value[:-1]
            end = start + len(value)
            if kind == "name" and rule in _STRONG_RULES:  # "JACKSON FIRST NAME:": the name is the leading words
                while value and not _plausible(kind, rule, m, value, text, start, lower_words) and " " in value:
                    value = value.rsplit(" ", 1)[0].rstrip(" ,")
                end = start + len(value)
            if not value or not _plausible(kind, rule, m, value, text, start, lower_words):
                continue
            if any(start < p_end and p_start < end for p_start, p_end in protected):
                continue
            found.append(PhiFinding(kind, start, end, value, rule))
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    merged: list[PhiFinding] = []
    for finding in found:
        if merged and finding.start < merged[-1].end:
            if finding.end > merged[-1].end:  # partial overlap: widen the earlier finding over both
                last = merged[-1]
                merged[-1] = PhiFinding(last.kind, last.start, finding.end, text[last.start:finding.end], last.rule)
            continue
        merged.append(finding)
    return merged


def _plausible(kind: str, rule: str, m: re.Match[str], value: str, text: str, start: int,
               lower_words: frozenset[str]) -> bool:
    if kind == "name":
        return _plausible_name(value, rule, text, start + len(value), lower_words)
    if rule == "numeric date":
        a, b = int(m.group(1)), int(m.group(3))
        valid = (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)
        if not valid or (m.group(2) == "." and len(m.group(4)) != 4):  # 1.5.1 (synoptic numbering) is no date
            return False
        return not _EFFECTIVE_DATE.search(text, max(0, start - 30), start)
    if kind == "date":
        return not _EFFECTIVE_DATE.search(text, max(0, start - 30), start)
    if rule == "accession number":
        return not _CPT.match(value)
    if kind == "phone":
        return sum(ch.isdigit() for ch in value) >= 7
    if rule == "IPv4 address":  # "1.5.1.2" is synoptic numbering; an address has longer octets or a label
        digits = sum(ch.isdigit() for ch in value)
        return digits >= 7 or bool(re.search(r"(?i:\bIP\b|address|host|server)\W{0,12}$", text[max(0, start - 20):start]))
    return True


_COMMON_SUFFIX = re.compile(r"(?:tion|sion|ment|ness|ous|ive|ology|ologic|ical|ically|ately|(?<!th)omas|ings|ity|"
                            r"ized|ectomy|otomy|oscopy|itis|osis|emia|plasia|cytes?|blast|genic|ular)$")
# Rules whose context names a person whatever the case of the name ("Patient Name: SMITH, JOHN").
_STRONG_RULES = frozenset({"name field", "labelled with the name", "upper-case name + record"})


def _plausible_name(value: str, rule: str, text: str, end: int, lower_words: frozenset[str]) -> bool:
    """Reject capitalised common words: field labels (followed by ':'), stop and report-structure words, words with
    digits or common English suffixes, all-caps words after a bare title, and — after a bare title or role, where a
    removed name leaves the next sentence's first word — words the same text also uses in lower case."""
    if text[end:end + 2].lstrip().startswith(":"):
        return False
    parts = [p.strip(",.") for p in value.replace(",", " ").split()]
    words = [p for p in parts if len(p) >= 2]
    if not words:
        return False
    strong = rule in _STRONG_RULES
    if len(words) == 1 and len(words[0]) < 3:
        return False
    if any(not re.search("[AEIOUYaeiouy]", w) for w in words):  # "FSB", "FSF": codes have no vowel
        return False
    for part in words:
        lower = part.lower()
        if lower in _NOT_NAMES or any(ch.isdigit() for ch in part) or _COMMON_SUFFIX.search(lower):
            return False
        if lower in _NOT_NAME_PREFIXES:  # OCR-truncated "Pathologis"
            return False
        if part.isupper() and not strong and rule != "given name + surname" and not (
                rule == "title + name" and len(words) == 1 and
                                                  _NAME_FOLLOWS_TITLE.match(text, end)):
            return False
    if strong:
        return True
    if rule == "given name + surname":
        first = words[0].upper()
        if first not in first_names() or words[0].isupper() != words[-1].isupper():
            return False
        if any(p.lower() in lower_words for p in words):  # "Will", "Rose", "Gray" used as words in this text
            return False
        return True
    # A weak context (a title or a role): the capitalised word may start the next sentence after a removed name
    # ("Dr. Deeper sections were cut"): refused when every word is used in lower case here and a lower-case word
    # follows.
    continues = re.match(r"\s+[a-z]", text[end:end + 3]) is not None
    mixed = [p for p in words if not p.isupper()]
    return not (continues and mixed and all(p.lower() in lower_words for p in mixed))


@functools.lru_cache(maxsize=1)
def first_names() -> frozenset[str]:
    """Given names (upper case) of the US Census 1990 name files (``reports/data/first_names.txt``)."""
    path = Path(__file__).with_name("data") / "first_names.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return frozenset(ln.strip() for ln in lines if ln.strip() and not ln.startswith("#"))


# After "Dr. SMITH": an all-caps surname is followed by what follows a name, not by more capitals of a heading.
_NAME_FOLLOWS_TITLE = re.compile(r"(?:[,.;)]|\s+(?i:at|on|who|and|was|has|is|by|in|for|of|re|concurs|notified|"
                                 r"called|paged|informed|agrees)\b|\s+[a-z])")

_GATES: dict[str, re.Pattern[str]] = {
    "email": re.compile("@"),
    "url": re.compile(r"(?i:https?://|www\.)"),
    "IPv4 address": re.compile(r"\d\.\d+\.\d+\.\d"),
    "phone": re.compile(r"\d{3}[ ./)-]\s?\d{3}[ .-]\d{4}|(?i:tel|phone|fax|pager|ph\b)"),
    "PO box": re.compile(r"(?i:box)"),
    "city, state + ZIP": re.compile(r"\b\d{5}\b"),
    "ssn": re.compile(r"\d{3}-\d{2}-\d{4}"),
    "age over 89": re.compile(r"(?i:(?<!\d)(?:9\d|1[01]\d)(?!\d)|ninety|hundred)"),
}


def redact(text: str, findings: Iterable[PhiFinding]) -> str:
    """Replace each finding's span with a visible ``[REDACTED:KIND]`` placeholder."""
    pieces: list[str] = []
    last = 0
    for finding in sorted(findings, key=lambda f: f.start):
        if finding.start < last:
            raise ValueError(f"overlapping findings at {finding.start}; pass the output of find_phi")
        pieces.append(text[last:finding.start])
        pieces.append(f"[REDACTED:{finding.kind.upper()}]")
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces)


def apply_phi_policy(text: str, policy: str = "refuse", *, where: str = "report") -> PhiScreen:
    """Screen `text` and apply the policy.

    Args:
        text: the text to screen (normally the normalised report).
        policy: ``"refuse"`` (default), ``"redact"`` or ``"allow"``.
        where: how the error message names the text (e.g. the record id).

    Returns:
        The text to use (redacted under ``redact``), the findings and the redaction marks already present.

    Raises:
        PhiFoundError: policy ``refuse`` and at least one finding.
        ValueError: an unknown policy.
    """
    if policy not in PHI_POLICIES:
        raise ValueError(f"unknown PHI policy {policy!r}; expected one of {list(PHI_POLICIES)}")
    findings = tuple(find_phi(text))
    marks = tuple(find_redaction_marks(text))
    if findings and policy == "refuse":
        raise PhiFoundError(findings, where)
    out = redact(text, findings) if policy == "redact" else text
    return PhiScreen(text=out, policy=policy, findings=findings, marks=marks)
