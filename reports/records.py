"""The report record: one pathology report's verbatim text and the metadata that came with it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ReportRecord:
    """One pathology report, exactly as it was read.

    The metadata fields (site, histologic type, grade, stage) come from the *source's own columns*
    (e.g. a TCGA table), never from the text; `reports.fields.extract_fields` finds what the text states.

    Attributes:
        id: unique identifier within its corpus (e.g. a TCGA barcode or ``file.csv:row 3``).
        text: the report text, verbatim (never rewritten by this package).
        patient_id: the patient identifier the source gives, if any.
        site: organ or anatomical site from the source's metadata, if any.
        histologic_type: histologic type or subtype from the source's metadata, if any.
        grade: grade from the source's metadata, if any.
        stage: stage from the source's metadata, if any.
        source: where the record was read from, e.g. ``"reports.csv:row 12"``.
        metadata: every other column or key of the source, as strings.
    """

    id: str
    text: str
    patient_id: str | None = None
    site: str | None = None
    histologic_type: str | None = None
    grade: str | None = None
    stage: str | None = None
    source: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id.strip():
            raise ValueError(f"ReportRecord.id must be a non-empty string, got {self.id!r} (source {self.source!r})")
        if not isinstance(self.text, str):
            raise TypeError(f"ReportRecord.text of {self.id!r} must be a str, got {type(self.text).__name__}")
        if not self.text.strip():
            raise ValueError(f"report {self.id!r} ({self.source or 'no source'}) has empty text; expected report text")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def text_sha256(self) -> str:
        """SHA-256 of the verbatim UTF-8 text (the provenance hash of the report)."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "id": self.id,
            "patient_id": self.patient_id,
            "site": self.site,
            "histologic_type": self.histologic_type,
            "grade": self.grade,
            "stage": self.stage,
            "source": self.source,
            "metadata": dict(self.metadata),
            "text": self.text,
        }
