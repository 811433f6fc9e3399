"""Report records and loaders: txt, folders, JSON, JSONL, CSV (the real TCGA corpus), with clear errors."""

from __future__ import annotations

import json

import pytest

from reports.loading import load_report, load_reports
from reports.records import ReportRecord
from tests.conftest import shared_file

TCGA_CSV = "reports/pathrepbench_tcga_reports_test.csv"


def test_tcga_csv_loads_every_report_with_its_metadata():
    records = load_reports(shared_file(TCGA_CSV))
    assert len(records) == 952
    assert len({r.id for r in records}) == 952
    first = records[0]
    assert first.id == first.patient_id == "TCGA-76-6661"
    assert first.site == "brain" and first.histologic_type == "Glioblastoma multiforme"
    assert first.text.startswith("FINAL DIAGNOSIS: 1. Right temporal tumor: glioblastoma multiforme")
    assert first.metadata["type_code"] == "GBM" and "text" not in first.metadata
    assert first.source == "pathrepbench_tcga_reports_test.csv:row 0"
    assert sum(r.stage is not None for r in records) == 594  # 358 rows have no stage
    assert len(first.text_sha256) == 64


def test_load_report_picks_a_row_or_an_id(tmp_path):
    path = shared_file(TCGA_CSV)
    assert load_report(path, row=1).id == "TCGA-SW-A7EA"
    assert load_report(path, report_id="TCGA-SW-A7EA").text == load_report(path, row=1).text
    with pytest.raises(ValueError, match=r"row 952 is out of range: .* holds 952 reports"):
        load_report(path, row=952)
    with pytest.raises(ValueError, match="no report with id 'TCGA-00-0000'"):
        load_report(path, report_id="TCGA-00-0000")
    with pytest.raises(ValueError, match="holds 952 reports; choose one"):
        load_report(path)


def test_text_file_folder_json_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("Final diagnosis: adenocarcinoma.\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("Gross: a 2 cm nodule.", encoding="utf-8")
    one = load_report(tmp_path / "a.txt")
    assert (one.id, one.text) == ("a", "Final diagnosis: adenocarcinoma.\n")  # verbatim, newline kept
    assert [r.id for r in load_reports(tmp_path)] == ["a", "b"]

    items = [{"report_id": "r1", "report": "Text one.", "organ": "lung", "grade": "G2", "extra": 3},
             {"report_id": "r2", "report": "Text two.", "histology": "squamous cell carcinoma"}]
    (tmp_path / "x.json").write_text(json.dumps({"reports": items}), encoding="utf-8")
    recs = load_reports(tmp_path / "x.json")
    assert [(r.id, r.site, r.grade, r.histologic_type) for r in recs] == [
        ("r1", "lung", "G2", None), ("r2", None, None, "squamous cell carcinoma")]
    assert recs[0].metadata == {"extra": "3"}
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(i) for i in items) + "\n\n", encoding="utf-8")
    assert [r.text for r in load_reports(tmp_path / "x.jsonl")] == ["Text one.", "Text two."]
    (tmp_path / "s.json").write_text(json.dumps(["plain text report"]), encoding="utf-8")
    assert load_report(tmp_path / "s.json").id == "s.json:item 0"


def test_bad_input_is_named(tmp_path):
    (tmp_path / "t.csv").write_text("case,body\n1,hello\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no report text column; expected one of .*found \['body', 'case'\]"):
        load_reports(tmp_path / "t.csv")
    assert load_reports(tmp_path / "t.csv", text_key="body")[0].text == "hello"
    (tmp_path / "e.csv").write_text("id,text\n1,hello\n2,  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"report '2' \(e.csv:row 1\) has empty text"):
        load_reports(tmp_path / "e.csv")
    (tmp_path / "d.csv").write_text("id,text\n1,a\n1,b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="duplicate report id '1': d.csv:row 0 and d.csv:row 1"):
        load_reports(tmp_path / "d.csv")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_reports(tmp_path / "bad.jsonl")
    (tmp_path / "r.pdf").write_bytes(b"%PDF")
    with pytest.raises(ValueError, match=r"unknown report file type '.pdf'"):
        load_reports(tmp_path / "r.pdf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reports(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="non-empty string"):
        ReportRecord(id="", text="x")
