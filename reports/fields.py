"""Rule-based fields where the text states them: histologic type, grade, stage (pTNM and stage group), margins.

Each field keeps the words as written (`value`, with its span as evidence) and a canonical label (`canonical`)
for grouping: class-balanced training and rare-subtype selection. Fields are shown to the user and used to
select and balance reports; they are never used to rewrite the text.

Where the text states a field several times (e.g. per specimen part), the synoptic section wins, then the final
diagnosis, then the first statement in the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from reports.sections import Section, find_sections

FIELD_NAMES: tuple[str, ...] = ("histologic_type", "grade", "stage", "margins")

# Canonical histologic type -> regex (most specific first; the first that matches a statement wins).
HISTOLOGIC_TYPES: tuple[tuple[str, str], ...] = (
    ("invasive ductal carcinoma", r"(?:invasive|infiltrating) (?:ductal|duct) carcinoma|carcinoma of no special type|invasive carcinoma of no special type"),
    ("invasive lobular carcinoma", r"(?:invasive|infiltrating) lobular carcinoma"),
    ("ductal carcinoma in situ", r"ductal carcinoma in situ|\bDCIS\b"),
    ("clear cell renal cell carcinoma", r"clear cell (?:renal cell )?carcinoma|renal cell carcinoma,? clear cell type|conventional renal cell carcinoma"),
    ("papillary renal cell carcinoma", r"papillary renal cell carcinoma|renal cell carcinoma,? papillary type"),
    ("chromophobe renal cell carcinoma", r"chromophobe (?:renal cell )?carcinoma|renal cell carcinoma,? chromophobe"),
    ("papillary thyroid carcinoma", r"papillary (?:thyroid )?carcinoma|papillary microcarcinoma"),
    ("follicular carcinoma", r"follicular carcinoma"),
    ("glioblastoma", r"glioblastoma(?: multiforme)?|\bGBM\b"),
    ("oligodendroglioma", r"(?:anaplastic )?oligodendroglioma"),
    ("oligoastrocytoma", r"(?:anaplastic )?oligoastrocytoma|mixed glioma"),
    ("astrocytoma", r"(?:anaplastic |diffuse |fibrillary )?astrocytoma"),
    ("hepatocellular carcinoma", r"hepatocellular carcinoma"),
    ("cholangiocarcinoma", r"cholangiocarcinoma"),
    ("urothelial carcinoma", r"urothelial carcinoma|transitional cell carcinoma"),
    ("squamous cell carcinoma", r"squamous cell carcinoma|squamous carcinoma"),
    ("serous carcinoma", r"(?:high[- ]grade |low[- ]grade )?(?:papillary )?serous (?:cyst)?adenocarcinoma|(?:high[- ]grade |low[- ]grade )?serous carcinoma"),
    ("endometrioid carcinoma", r"endometrioid (?:adeno)?carcinoma"),
    ("carcinosarcoma", r"carcinosarcoma|malignant mixed m[uü]llerian tumou?r"),
    ("mucinous adenocarcinoma", r"mucinous adenocarcinoma|colloid carcinoma"),
    ("signet ring cell carcinoma", r"signet[- ]ring cell carcinoma"),
    ("adenosquamous carcinoma", r"adenosquamous carcinoma"),
    ("small cell carcinoma", r"small cell (?:neuroendocrine )?carcinoma"),
    ("large cell carcinoma", r"large cell (?:neuroendocrine )?carcinoma"),
    ("adenocarcinoma", r"adenocarcinoma"),
    ("melanoma", r"(?:malignant )?melanoma"),
    ("pheochromocytoma", r"pheochromocytoma"),
    ("paraganglioma", r"paraganglioma"),
    ("adrenocortical carcinoma", r"adrenal cortical carcinoma|adrenocortical carcinoma"),
    ("thymoma", r"thymoma"),
    ("thymic carcinoma", r"thymic carcinoma"),
    ("mesothelioma", r"mesothelioma"),
    ("seminoma", r"seminoma"),
    ("mixed germ cell tumor", r"(?:mixed )?(?:malignant )?germ cell tumou?r|embryonal carcinoma|yolk sac tumou?r|teratoma"),
    ("diffuse large B-cell lymphoma", r"diffuse large b[- ]cell lymphoma|\bDLBCL\b"),
    ("lymphoma", r"lymphoma"),
    ("leiomyosarcoma", r"leiomyosarcoma"),
    ("liposarcoma", r"(?:dedifferentiated |myxoid |pleomorphic |well[- ]differentiated )?liposarcoma"),
    ("undifferentiated pleomorphic sarcoma", r"undifferentiated pleomorphic sarcoma|malignant fibrous histiocytoma|pleomorphic sarcoma"),
    ("myxofibrosarcoma", r"myxofibrosarcoma"),
    ("synovial sarcoma", r"synovial sarcoma"),
    ("sarcoma", r"sarcoma"),
    ("neuroendocrine tumor", r"neuroendocrine (?:tumou?r|carcinoma)|carcinoid"),
    ("renal cell carcinoma", r"renal cell carcinoma"),
    ("carcinoma", r"carcinoma"),
)
_TYPES = [(label, re.compile(rf"\b(?:{pattern})", re.IGNORECASE)) for label, pattern in HISTOLOGIC_TYPES]
_TYPES_COMBINED = re.compile(
    r"\b(?:" + "|".join(f"(?P<t{i}>{pattern})" for i, (_, pattern) in enumerate(HISTOLOGIC_TYPES)) + ")", re.IGNORECASE
)
_NEGATED = re.compile(r"(?:\bno\b|\bnegative for\b|\bfree of\b|\bwithout\b|\babsent\b|\bnot\b|\bno evidence of\b|\brule out\b|\br/o\b)[^.;:]{0,40}$", re.IGNORECASE)
_TYPE_KEY = re.compile(r"histologic(?:al)? (?:tumou?r )?type(?:/subtype)?\s*:\s*([^.;\n]{3,120})|tumou?r type\s*:\s*([^.;\n]{3,120})", re.IGNORECASE)

_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4}
_GRADE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("gleason", re.compile(r"gleason(?: score)?[^0-9]{0,20}(\d)\s*\+\s*(\d)(?:\s*=\s*(\d{1,2}))?", re.IGNORECASE)),
    ("who", re.compile(r"\bWHO (?:grade )?\b(IV|III|II|I|[1-4])\b(?!\s*/)|\bgrade (IV|III|II|I)(?: of IV| \(of IV\)|/IV)?\s*\(?WHO\b", re.IGNORECASE)),
    ("fnclcc", re.compile(r"FNCLCC[^.]{0,30}?grade\s*:?\s*([1-3]|I{1,3})\b|French[^.]{0,40}?grade\s*:?\s*([1-3])\b", re.IGNORECASE)),
    ("fuhrman", re.compile(r"(?:fuhrman|nuclear|ISUP|WHO/ISUP)(?: nuclear)? grade\s*:?\s*(?:is\s*)?([1-4]|IV|III|II|I)\b", re.IGNORECASE)),
    ("nottingham", re.compile(r"(?:nottingham|combined|overall|histologic) (?:histologic )?grade\s*:?\s*(?:grade\s*)?([1-3]|I{1,3})\b", re.IGNORECASE)),
    ("G", re.compile(r"\b(?:histologic grade|grade)\s*:?\s*\(?G([1-4X])\b|\bG([1-4])\s*:", re.IGNORECASE)),
    ("grade", re.compile(r"\bgrade\s*:?\s*(IV|III|II|I)\b(?!\s*/)", re.IGNORECASE)),
    ("differentiation", re.compile(r"\b(well|moderately|poorly|un)[- ]?differentiated\b", re.IGNORECASE)),
    ("high/low", re.compile(r"\b(high|low|intermediate)[- ]grade\b", re.IGNORECASE)),
)

_PTNM = re.compile(
    r"\b((?:y|r|m)?p?)T([0-4][a-d]?|is|x|X)(?:\s*\((?:m|\d+)\))?[\s,;/]*"
    r"(?:(?:y|r)?p?N([0-3][a-c]?|x|X|O)(?:\s*\((?:i[+-]|sn|mol[+-]|sn\)\s*\(i[+-])\))?[\s,;/]*)?"
    r"(?:(?:c|p)?M([01][a-c]?|x|X|O)\b)?"
)
_STAGE_GROUP = re.compile(r"\b(?:AJCC |pathologic(?:al)? |overall |anatomic )?stage(?: group(?:ing)?)?\s*:?\s*(0|IV|III|II|I)([ABC][12]?)?\b(?!\s*(?:of|/))", re.IGNORECASE)
_FIGO = re.compile(r"\bFIGO(?: stage)?\s*:?\s*(IV|III|II|I)([ABC][12]?)?\b", re.IGNORECASE)

_MARGIN = re.compile(
    r"\bmargins?\b[^.;]{0,80}?\b(uninvolved|not involved|negative|free|clear|involved|positive|close)\b"
    r"|\b(uninvolved|negative|free|clear|involved|positive|close) (?:resection |surgical )?margins?\b",
    re.IGNORECASE,
)
_MARGIN_CANON = {"uninvolved": "negative", "not involved": "negative", "negative": "negative", "free": "negative",
                 "clear": "negative", "involved": "positive", "positive": "positive", "close": "close"}


@dataclass(frozen=True)
class ReportField:
    """A field the text states: `value` is the text as written at [start, end); `canonical` is its label."""

    name: str
    value: str
    canonical: str
    start: int
    end: int
    section: str | None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "canonical": self.canonical, "start": self.start,
                "end": self.end, "section": self.section}


def extract_fields(text: str, sections: list[Section] | None = None) -> dict[str, ReportField]:
    """The fields the text states (absent ones are left out).

    Args:
        text: the report text (normalised or verbatim).
        sections: `find_sections(text)`, if already computed.

    Returns:
        ``{"histologic_type": ..., "grade": ..., "stage": ..., "margins": ...}`` for those found.
    """
    sections = find_sections(text) if sections is None else sections
    order = _search_order(text, sections)
    found: dict[str, ReportField] = {}
    for name, finder in (("histologic_type", _histologic_type), ("grade", _grade), ("stage", _stage),
                         ("margins", _margins)):
        for section, start, end in order:
            hit = finder(text, start, end)
            if hit is not None:
                value, canonical, s, e = hit
                found[name] = ReportField(name, value, canonical, s, e, section)
                break
    return found


def _search_order(text: str, sections: list[Section]) -> list[tuple[str | None, int, int]]:
    ranked: list[tuple[str | None, int, int]] = []
    for wanted in ("synoptic", "final_diagnosis"):
        ranked += [(s.name, s.start, s.end) for s in sections if s.name == wanted]
    ranked.append((None, 0, len(text)))
    return ranked


def _histologic_type(text: str, start: int, end: int) -> tuple[str, str, int, int] | None:
    for m in _TYPE_KEY.finditer(text, start, end):
        group = 1 if m.group(1) is not None else 2
        statement = m.group(group).strip()
        for label, pattern in _TYPES:
            if pattern.search(statement):
                return statement, label, m.start(group), m.start(group) + len(statement)
    for m in _TYPES_COMBINED.finditer(text, start, end):  # earliest statement; at a tie the most specific type
        if not _NEGATED.search(text, max(start, m.start() - 60), m.start()):
            label = HISTOLOGIC_TYPES[int(m.lastgroup[1:])][0]  # type: ignore[index]
            return m.group(), label, m.start(), m.end()
    return None


def _grade(text: str, start: int, end: int) -> tuple[str, str, int, int] | None:
    for system, pattern in _GRADE_PATTERNS:
        m = pattern.search(text, start, end)
        if m is None:
            continue
        groups = [g for g in m.groups() if g is not None]
        if system == "gleason":
            primary, secondary = int(m.group(1)), int(m.group(2))
            canonical = f"Gleason {primary}+{secondary}={primary + secondary}"
        elif system == "differentiation":
            canonical = {"un": "undifferentiated"}.get(groups[0].lower(), f"{groups[0].lower()} differentiated")
        elif system == "high/low":
            canonical = f"{groups[0].lower()} grade"
        elif system == "G":
            canonical = f"G{groups[0].upper()}"
        elif system == "fuhrman":
            word = m.group().lower()
            kind = "Fuhrman" if "fuhrman" in word else "ISUP" if "isup" in word else "nuclear grade"
            canonical = f"{kind} {_arabic(groups[0])}"
        else:
            canonical = f"{'WHO' if system == 'who' else system.capitalize()} {_arabic(groups[0])}"
        return m.group(), canonical, m.start(), m.end()
    return None


def _arabic(value: str) -> str:
    return str(_ROMAN.get(value.lower(), value))


def _stage(text: str, start: int, end: int) -> tuple[str, str, int, int] | None:
    for m in _PTNM.finditer(text, start, end):
        prefix, t, n, metastasis = m.group(1), m.group(2), m.group(3), m.group(4)
        if n is None and metastasis is None and "p" not in prefix:
            continue  # a bare "T2" is too ambiguous (T2-weighted, T2 vertebra)
        parts = [f"{prefix or ''}T{t.lower() if t in ('is', 'X', 'x') else t}"]
        if n is not None:
            parts.append(f"N{'0' if n == 'O' else n.lower() if n in ('X', 'x') else n}")
        if metastasis is not None:
            parts.append(f"M{'0' if metastasis == 'O' else metastasis.lower() if metastasis in ('X', 'x') else metastasis}")
        value = m.group().rstrip(" ,;/")
        return value, " ".join(parts), m.start(), m.start() + len(value)
    for pattern, label in ((_STAGE_GROUP, "Stage"), (_FIGO, "FIGO")):
        found = pattern.search(text, start, end)
        if found is not None:
            canonical = f"{label} {found.group(1).upper()}{(found.group(2) or '').upper()}"
            return found.group(), canonical, found.start(), found.end()
    return None


def _margins(text: str, start: int, end: int) -> tuple[str, str, int, int] | None:
    m = _MARGIN.search(text, start, end)
    if m is None:
        return None
    word = (m.group(1) or m.group(2)).lower()
    before = text[max(start, m.start()):m.end()].lower()
    canonical = _MARGIN_CANON[word]
    if canonical == "positive" and re.search(r"\b(?:not|un|no)\b[^.;]{0,20}(?:involved|positive)", before):
        canonical = "negative"
    return m.group(), canonical, m.start(), m.end()


def field_counts(all_fields: Iterable[dict[str, ReportField]]) -> dict[str, dict[str, int]]:
    """Counts per field and canonical label over many reports (for the corpus table and class balancing)."""
    counts: dict[str, dict[str, int]] = {name: {} for name in FIELD_NAMES}
    for fields in all_fields:
        for name, field in fields.items():
            counts[name][field.canonical] = counts[name].get(field.canonical, 0) + 1
    return counts
