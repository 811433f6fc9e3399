"""Sections and rule-based fields: exact spans and labels on known text; fields never change the text."""

from __future__ import annotations

from reports import extract_fields, find_sections

REPORT = (
    "CLINICAL HISTORY: Breast mass.\n"
    "GROSS DESCRIPTION: A 3.0 x 2.5 cm lumpectomy.\n"
    "MICROSCOPIC DESCRIPTION: Sections show no evidence of lobular carcinoma in situ.\n"
    "FINAL DIAGNOSIS: Left breast: infiltrating ductal carcinoma, Nottingham grade 2. "
    "Margins are not involved. pT2 pNO (sn) MX.\n"
    "COMMENT: Reviewed in consultation."
)


def test_sections_are_found_with_spans():
    sections = find_sections(REPORT)
    assert [(s.name, s.heading) for s in sections] == [
        ("clinical_history", "CLINICAL HISTORY"), ("gross", "GROSS DESCRIPTION"),
        ("microscopic", "MICROSCOPIC DESCRIPTION"), ("final_diagnosis", "FINAL DIAGNOSIS"), ("comment", "COMMENT")]
    assert sections[1].text_of(REPORT) == "GROSS DESCRIPTION: A 3.0 x 2.5 cm lumpectomy.\n"
    assert sections[-1].end == len(REPORT)


def test_fields_as_stated_with_canonical_labels():
    fields = extract_fields(REPORT)
    summary = {name: (f.value, f.canonical, f.section) for name, f in fields.items()}
    assert summary == {
        "histologic_type": ("infiltrating ductal carcinoma", "invasive ductal carcinoma", "final_diagnosis"),
        "grade": ("Nottingham grade 2", "Nottingham 2", "final_diagnosis"),
        "stage": ("pT2 pNO (sn) MX", "pT2 N0 Mx", "final_diagnosis"),  # OCR'd "NO" read as N0
        "margins": ("Margins are not involved", "negative", "final_diagnosis"),
    }
    for f in fields.values():
        assert REPORT[f.start:f.end] == f.value  # evidence points into the unchanged text


def test_synoptic_block_wins_and_negations_are_skipped():
    text = ("Diagnosis: negative for squamous cell carcinoma; see synoptic. "
            "Histologic Type: Clear cell renal cell carcinoma. Histologic Grade: Fuhrman nuclear grade 3. "
            "Tumor Size: 4.2 cm. Margins: Positive at the renal vein margin. Pathologic Stage: pT3a pNX.")
    sections = find_sections(text)
    assert "synoptic" in [s.name for s in sections]
    fields = extract_fields(text, sections)
    assert fields["histologic_type"].canonical == "clear cell renal cell carcinoma"
    assert fields["histologic_type"].section == "synoptic"
    assert fields["grade"].canonical == "Fuhrman 3"
    assert fields["margins"].canonical == "positive"
    assert fields["stage"].canonical == "pT3a Nx"
    assert extract_fields("Benign breast tissue. Negative for carcinoma.") == {}
    assert extract_fields("Gleason score 4 + 3 = 7, prostatic adenocarcinoma")["grade"].canonical == "Gleason 4+3=7"
