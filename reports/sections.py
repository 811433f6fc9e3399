"""The sections a report has: final diagnosis, gross, microscopic, comment, synoptic (and a few more).

A heading is a known name (`SECTION_HEADINGS`) at the start of the text, a line or a sentence, followed by a colon
or a line break. A section runs from its heading to the next heading. A synoptic block without its own heading
(three or more CAP checklist items such as "Histologic Type:", "Margins:") is found as well. Sections only
point into the text; they never change it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Canonical section -> headings (matched case-insensitively; the longest heading wins).
SECTION_HEADINGS: dict[str, tuple[str, ...]] = {
    "final_diagnosis": (
        "final diagnosis", "final pathologic diagnosis", "final pathological diagnosis", "diagnosis",
        "diagnoses", "pathologic diagnosis", "pathological diagnosis", "permanent diagnosis",
        "surgical pathology diagnosis", "final report", "diagnostic interpretation", "interpretation",
        "conclusion", "pathology diagnosis",
    ),
    "gross": (
        "gross description", "gross", "gross examination", "macroscopic description", "macroscopic",
        "macroscopy", "gross pathology", "specimen description",
    ),
    "microscopic": (
        "microscopic description", "microscopic", "microscopic examination", "microscopy", "histology",
        "histologic description", "microscopic findings",
    ),
    "comment": ("comment", "comments", "note", "notes", "diagnostic comment", "addendum comment"),
    "synoptic": (
        "synoptic", "synoptic report", "case synopsis", "synoptic diagnosis", "cancer case summary",
        "tumor summary", "synoptic data", "checklist",
    ),
    "clinical_history": (
        "clinical history", "clinical information", "clinical data", "clinical diagnosis", "history",
        "patient history", "clinical diagnosis & history", "pre-op diagnosis", "pre-operative diagnosis",
        "preoperative diagnosis",
    ),
    "frozen_section": (
        "frozen section diagnosis", "intraoperative consultation", "intra operative consultation",
        "intraoperative consult diagnosis", "frozen section", "fs/dx",
    ),
    "specimen": ("specimen", "specimens", "specimens submitted", "source of specimen", "specimen(s)",
                 "tissue submitted", "material"),
    "addendum": ("addendum",),
}
SYNOPTIC_KEYS = (
    "histologic type", "histologic grade", "tumor size", "margins", "surgical margins", "tumor site",
    "lymph nodes", "procedure", "specimen type", "tumor focality", "tumor extent", "pathologic stage",
    "lymph-vascular invasion", "lymphovascular invasion", "perineural invasion", "primary tumor",
    "regional lymph nodes", "distant metastasis", "histologic type/subtype",
)

_HEADING_TO_SECTION = {h: name for name, heads in SECTION_HEADINGS.items() for h in heads}
_HEADING = re.compile(
    r"(?:\A|(?<=\n)|(?<=[.:;]\s)|(?<=\d\s))\s*("
    + "|".join(re.escape(h) for h in sorted(_HEADING_TO_SECTION, key=len, reverse=True))
    + r")\s*(?::|-\s|\n|\.\s+(?=[A-Z0-9]))",
    re.IGNORECASE,
)
_SYNOPTIC_KEY = re.compile(
    r"(?:\A|(?<=\n)|(?<=[.;]\s)|(?<=-\s))(" + "|".join(re.escape(k) for k in SYNOPTIC_KEYS) + r")\s*:",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Section:
    """One section: `name` (canonical), the `heading` as written, and its span [start, end) in the text."""

    name: str
    heading: str
    start: int
    end: int

    def text_of(self, text: str) -> str:
        return text[self.start:self.end]

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "heading": self.heading, "start": self.start, "end": self.end}


def find_sections(text: str) -> list[Section]:
    """Sections in order of appearance (a name may occur more than once, e.g. one diagnosis per part)."""
    heads = [(m.start(1), m.group(1)) for m in _HEADING.finditer(text)]
    synoptic = [m.start(1) for m in _SYNOPTIC_KEY.finditer(text)]
    if len(synoptic) >= 3 and not any(_HEADING_TO_SECTION[h.lower()] == "synoptic" for _, h in heads):
        first = synoptic[0]
        # an unlabelled synoptic block starts at its first checklist item, unless a heading already starts there
        if not any(abs(start - first) < 2 for start, _ in heads):
            heads.append((first, text[first:first + len(text[first:].split(":", 1)[0])]))
            heads.sort()
    sections: list[Section] = []
    for i, (start, heading) in enumerate(heads):
        end = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        name = _HEADING_TO_SECTION.get(heading.lower(), "synoptic")
        sections.append(Section(name, heading, start, end))
    return sections


def section_text(text: str, sections: list[Section], name: str) -> str:
    """The text of every section called `name`, joined by blank lines ("" if none)."""
    return "\n\n".join(s.text_of(text) for s in sections if s.name == name)
