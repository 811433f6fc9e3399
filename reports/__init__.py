"""Pathology report records, loading, normalisation that adds nothing, PHI screening, conditioning text.

This package never imports torch, and never rewrites or embellishes a report.
"""

from __future__ import annotations

from reports.conditioning import (
    ConditioningText,
    ConditioningTokenizer,
    ReportTruncatedWarning,
    conditioning_text,
    reject_prompt_enhancer,
)
from reports.fields import FIELD_NAMES, ReportField, extract_fields, field_counts
from reports.loading import iter_reports, load_report, load_reports
from reports.normalize import Edit, NormalizedText, added_words, normalize, words
from reports.phi import PHI_KINDS, PhiFinding, PhiFoundError, PhiScreen, apply_phi_policy, find_phi, redact
from reports.records import ReportRecord
from reports.sections import Section, find_sections

__all__ = [
    "ConditioningText", "ConditioningTokenizer", "ReportTruncatedWarning", "conditioning_text",
    "reject_prompt_enhancer", "FIELD_NAMES", "ReportField", "extract_fields", "field_counts", "iter_reports",
    "load_report", "load_reports", "Edit", "NormalizedText", "added_words", "normalize", "words", "PHI_KINDS", "PhiFinding",
    "PhiFoundError", "PhiScreen", "apply_phi_policy", "find_phi", "redact", "ReportRecord", "Section",
    "find_sections",
]
