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

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

PhiPolicy = Literal["refuse", "redact", "allow"]
PHI_POLICIES: tuple[str, ...] = ("refuse", "redact", "allow")
PHI_KINDS: tuple[str, ...] = ("name", "date", "phone", "email", "record_number", "id_number", "address")


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

_MONTHS = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
           r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")
# Capitalised words that follow "Dr." or a role in these reports but are not names.
_NOT_NAMES = frozenset("""
first last my who whom your his her their our light microscopy release status lung cancer registry operation
histologic histology source special deeper approximately carcinoma carcinomas campus working draft signature
also received performed operator addendum attestation results result procedure findings impression summary
sample samples biopsy excision resection immunohistochemistry stain stains stained positive negative
mostly synoptic endometrial benign malignant grade stage type size site sex age male female patient patients path surg case cases""".split()) | frozenset("""
the a an and or of for in on at to by with from this that these see per is was are be has have had not no
resident attending pathologist pathology physician surgeon staff fellow report reports block summary gross
frozen final diagnosis comment comments note microscopic description specimen specimens clinical history
date time signed signature electronically dictated reviewed verified case slide slides section sections
department laboratory hospital center clinic medical university office surgery surgical service unit
left right tumor tissue margin margins lymph node nodes part pre post operative intraoperative consultation
unknown none other mr mrs ms dr md phd do pa rn
""".split())
_STATES = ("AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM NY NC ND "
           "OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC").split()
_NAME = r"(?:[A-Z]')?[A-Z][a-z]+(?:-[A-Z][a-z]+)?"
_ROLE = (r"(?:Patient(?:'s)? Name|Patient|(?<!Report )Name|Pathologist|Attending(?: Pathologist)?|Resident(?: Physician)?|"
         r"Surgeon|Physician|Ordering (?:Physician|Provider)|Referring (?:Physician|Doctor)|Requesting Physician|"
         r"(?:Electronically )?[Ss]igned(?: out)? by|Dictated by|Verified by|Reviewed by|Transcribed by|"
         r"Grossed by|Prosector|Cc|CC|Copy to)")

_DETECTORS: list[tuple[str, str, re.Pattern[str], int]] = [
    # (kind, rule name, pattern, group holding the identifier (0 = whole match))
    ("email", "email", re.compile(r"\b[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), 0),
    ("phone", "phone", re.compile(
        r"(?<![\w.-])(?:\+?1[ .-]?)?(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w-]|\.\d)"
        r"|(?i:\b(?:tel|phone|fax|pager|ph)\b\.?\s*(?:no\.?|#)?\s*:?\s*)(\d[\d .()-]{6,}\d)"), 0),
    ("id_number", "ssn", re.compile(r"(?<![\w.-])\d{3}-\d{2}-\d{4}(?![\w-])"), 0),
    ("record_number", "labelled record number", re.compile(
        r"(?i:\b(?:MRN|MR\s?#|medical\s+record\s*(?:no\.?|number|#)|acc(?:ession)?\.?\s*(?:no\.?|number|#)|"
        r"case\s*(?:no\.?|number|#)|path(?:ology)?\s*(?:no\.?|number|#)|specimen\s*(?:no\.?|number|#)|"
        r"account\s*(?:no\.?|number|#)|patient\s*(?:id|no\.?|number|#)|lab\s*(?:no\.?|number|#)|"
        r"SSN|social\s+security\s*(?:no\.?|number|#)?|chart\s*(?:no\.?|number|#))\s*[:#]?\s*)"
        r"([A-Z]{0,4}[- ]?\d[\dA-Z-]{3,})"), 1),
    ("record_number", "accession number", re.compile(
        r"(?<![\w-])[A-Z]{1,3}-?\d{2}-\d{3,7}(?![\w-])"), 0),
    ("id_number", "long digit run", re.compile(r"(?<![\w.,/-])\d{7,}(?![\w,/-]|\.\d)"), 0),
    ("date", "numeric date", re.compile(
        r"(?<![\w./-])(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})(?![\w/]|\.\d|-\d)"), 0),
    ("date", "ISO date", re.compile(r"(?<![\w-])(?:19|20)\d{2}-[01]\d-[0-3]\d(?![\w-])"), 0),
    ("date", "written date", re.compile(
        rf"\b(?:{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d{{2}}|\d{{1,2}}\s+{_MONTHS}\.?,?\s+(?:19|20)\d{{2}})\b"), 0),
    ("name", "title + name", re.compile(
        rf"\b(?:Dr|Drs|Doctor|Mr|Mrs|Ms|Miss|Prof)\.?\s+((?:{_NAME}\s+)?(?:[A-Z]\.\s+)?{_NAME})"), 1),
    ("name", "role + name", re.compile(
        rf"\b{_ROLE}\s*:?\s+((?:{_NAME},?\s+)(?:[A-Z]\.\s*)?(?:{_NAME})?)"), 1),
    ("name", "name + degree", re.compile(
        rf"\b((?:{_NAME}\s+)(?:[A-Z]\.\s+)?{_NAME}),?\s+(?:M\.D\.|MD|D\.O\.|DO|Ph\.D\.|PhD|MBBS|FRCPC)\b"), 1),
    ("address", "street address", re.compile(
        r"\b\d{1,6}\s+(?:[NSEW]\.?\s+)?(?:[A-Z][a-z]+\s+){1,3}(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|"
        r"Drive|Lane|Way|Court|Place|Parkway|Pkwy|Highway|Hwy|Terrace)\b\.?(?!\s*\d)"), 0),
    ("address", "PO box", re.compile(r"\bP\.?\s?O\.?\s+Box\s+\d+\b", re.IGNORECASE), 0),
    ("address", "state + ZIP", re.compile(rf"\b(?:{'|'.join(_STATES)}),?\s+\d{{5}}(?:-\d{{4}})?\b"), 0),
]

# Look-alikes that are never flagged.
_TCGA_BARCODE = re.compile(r"\bTCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(?:-[A-Z0-9-]+)?\b")
_CPT = re.compile(r"^[A-Z]{1,3}-?\d{2}-88\d{3}$")  # "P16-88342": an antibody + its CPT code
_EFFECTIVE_DATE = re.compile(r"(?i:effective|revised|version|edition|updated|copyright|protocol)\W{0,3}\s*$")


def find_redaction_marks(text: str) -> list[RedactionMark]:
    """Redaction marks already in `text` (XXX, [REDACTED], <Resident Signature>, ***, ...)."""
    return [RedactionMark(m.start(), m.end(), m.group()) for m in _MARKS.finditer(text)]


def find_phi(text: str) -> list[PhiFinding]:
    """Likely identifiers in `text`, sorted by position, overlaps merged (the longer finding wins).

    Spans that overlap a redaction mark or a TCGA barcode are not reported.
    """
    protected = [(m.start, m.end) for m in find_redaction_marks(text)]
    protected += [(m.start(), m.end()) for m in _TCGA_BARCODE.finditer(text)]
    found: list[PhiFinding] = []
    for kind, rule, pattern, group in _DETECTORS:
        gate = _GATES.get(rule)
        if gate is not None and not gate.search(text):
            continue
        for m in pattern.finditer(text):
            g = group if group and m.group(group) is not None else 0
            start, end = m.span(g)
            value = text[start:end].rstrip(" ,.")
            end = start + len(value)
            if not value or not _plausible(kind, rule, m, value, text, start):
                continue
            if any(start < p_end and p_start < end for p_start, p_end in protected):
                continue
            found.append(PhiFinding(kind, start, end, value, rule))
    found.sort(key=lambda f: (f.start, -(f.end - f.start)))
    merged: list[PhiFinding] = []
    for finding in found:
        if merged and finding.start < merged[-1].end:
            continue  # overlaps a longer or earlier finding
        merged.append(finding)
    return merged


def _plausible(kind: str, rule: str, m: re.Match[str], value: str, text: str, start: int) -> bool:
    if kind == "name":
        return _plausible_name(value, text, m.end())
    if rule == "numeric date":
        a, b = int(m.group(1)), int(m.group(2))
        valid = (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)
        if not valid or "." in m.group():  # 1.5.1 (synoptic numbering), 3.0.2 are not dates
            return False
        return not _EFFECTIVE_DATE.search(text, max(0, start - 30), start)
    if kind == "date":
        return not _EFFECTIVE_DATE.search(text, max(0, start - 30), start)
    if rule == "accession number":
        return not _CPT.match(value)
    return True


_COMMON_SUFFIX = re.compile(r"(?:tion|sion|ment|ness|ous|ive|ology|ologic|ical|ically|ately|omas|ings|ity|ized)$")


def _plausible_name(value: str, text: str, end: int) -> bool:
    """Reject capitalised common words: field labels (followed by ':'), stop words, all-caps words, words with
    common English suffixes, and words the same text also uses in lower case (a sentence start, not a name)."""
    if text[end:end + 2].lstrip().startswith(":"):
        return False
    for part in (p.strip(",.") for p in value.split()):
        if len(part) < 2:
            continue
        lower = part.lower()
        if lower in _NOT_NAMES or part.isupper() or _COMMON_SUFFIX.search(lower):
            return False
        if re.search(rf"\b{re.escape(lower)}\b", text):
            return False
    return True


_GATES: dict[str, re.Pattern[str]] = {
    "email": re.compile("@"),
    "phone": re.compile(r"\d{3}[ .)-]\s?\d{3}[ .-]\d{4}|(?i:tel|phone|fax|pager|ph\b)"),
    "PO box": re.compile(r"(?i:box)"),
    "state + ZIP": re.compile(r"\b\d{5}\b"),
    "ssn": re.compile(r"\d{3}-\d{2}-\d{4}"),
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
