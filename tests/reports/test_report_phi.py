"""PHI screening: planted identifiers of every kind are caught in real report text, the corpus' own redaction
marks and identifier look-alikes are not, and the policies refuse, redact or allow."""

from __future__ import annotations

import pytest

from reports.loading import load_reports
from reports.normalize import normalize
from reports.phi import PhiFoundError, apply_phi_policy, find_phi, find_redaction_marks
from tests.conftest import shared_file

# (kind, identifier, sentence that carries it)
PLANTED = [
    ("name", "John Smith", "Patient Name: John Smith."),
    ("name", "Margaret O'Neil", "Electronically signed by Margaret O'Neil, M.D."),
    ("name", "Alvarez", "Frozen section called to Dr. Alvarez at 10:42."),
    ("date", "03/14/1962", "DOB 03/14/1962."),
    ("date", "March 3, 2011", "Date of procedure: March 3, 2011."),
    ("date", "2011-03-18", "Received 2011-03-18."),
    ("phone", "(617) 555-0134", "Call (617) 555-0134 with questions."),
    ("email", "jsmith@hospital.org", "Send results to jsmith@hospital.org."),
    ("record_number", "00482913", "MRN: 00482913."),
    ("record_number", "S11-23456", "Accession No: S11-23456."),
    ("record_number", "SP12-4471", "Compare prior case SP12-4471."),
    ("id_number", "123-45-6789", "SSN 123-45-6789."),
    ("id_number", "90817263544", "Requisition 90817263544."),
    ("address", "221 Baker Street", "Home: 221 Baker Street, Springfield."),
    ("address", "Boston, MA 02115", "Boston, MA 02115."),
    ("address", "PO Box 4412", "Mail to PO Box 4412."),
]


def _real_text() -> str:
    return normalize(load_reports(shared_file("reports/pathrepbench_tcga_reports_test.csv"))[0].text).text


def _plant(base: str) -> str:
    words = base.split(" ")
    step = max(1, len(words) // (len(PLANTED) + 1))
    for i, (_, _, sentence) in enumerate(reversed(PLANTED)):
        words.insert(len(words) - (i + 1) * step, sentence)
    return " ".join(words)


@pytest.mark.parametrize("kind, identifier, sentence", PLANTED, ids=[p[1] for p in PLANTED])
def test_each_planted_identifier_is_caught_with_its_kind(kind, identifier, sentence):
    text = _plant(_real_text())
    hits = [f for f in find_phi(text) if f.text == identifier]
    assert len(hits) == 1, f"{identifier!r} not found as one finding: {[f.text for f in find_phi(text)]}"
    assert hits[0].kind == kind
    assert text[hits[0].start:hits[0].end] == identifier


def test_real_report_without_plants_has_no_findings_and_policies_behave():
    base = _real_text()
    assert find_phi(base) == []
    text = _plant(base)
    findings = find_phi(text)
    assert {f.text for f in findings} == {p[1] for p in PLANTED}  # nothing else in the real text is flagged
    with pytest.raises(PhiFoundError, match=r"16 finding\(s\): name at \[\d+:\d+\]") as info:
        apply_phi_policy(text)  # refuse is the default
    assert len(info.value.findings) == 16 and "John Smith" not in str(info.value)  # the message names spans, not PHI
    redacted = apply_phi_policy(text, "redact")
    for _, identifier, _ in PLANTED:
        assert identifier not in redacted.text
    assert redacted.text.count("[REDACTED:") == 16 and "[REDACTED:EMAIL]" in redacted.text
    assert find_phi(redacted.text) == []  # our placeholders are recognised as redaction marks
    allowed = apply_phi_policy(text, "allow")
    assert allowed.text == text and len(allowed.findings) == 16
    with pytest.raises(ValueError, match=r"unknown PHI policy 'ignore'; expected one of \['refuse', 'redact', 'allow'\]"):
        apply_phi_policy(text, "ignore")


def test_look_alikes_and_existing_redaction_marks_are_not_flagged():
    text = ("Specimen A1-A4, Part 18: TCGA-AB-1234-01A. Tumor 2.5 x 1.0 x 0.5 cm, AJCC 7th edition, pT2 N0 M0, "
            "stage 1.5.1. IHC P16-88342, RP11-163C9 probe, [T-C4000 M-09470]. Effective January 1, 2010 this "
            'Checklist applies. Labeled "XXX, omentum". Final Report Signed Out: <Resident Signature>. '
            "Ki-67 index 2-4%. Dr. The frozen section diagnosis. Report Name: Synoptic report.")
    assert find_phi(text) == []
    assert [m.text for m in find_redaction_marks(text)] == ["XXX", "<Resident Signature>"]
