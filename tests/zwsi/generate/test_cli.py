"""`zwsi generate` / `zwsi generate-cohort` end to end with the tiny random pipeline, and cohort resume."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from slide_io import open_slide, read_provenance, sha256_text
from tests.zwsi.generate.generate_testing import Counting
from zwsi.cli import main
from zwsi.generate.cohort import (
    MANIFEST_COLUMNS,
    cohort_seed,
    generate_cohort,
    parse_where,
    read_manifest,
    report_fields,
    select_reports,
)
from zwsi.generate.job import SlideRequest
from zwsi.generate.pipeline import SlideGenerator

TINY_SLIDE = ["--width-um", "120", "--height-um", "100", "--mpp", "2", "--steps", "1", "--no-progress"]
REPORTS = [
    {"id": "r1", "text": "Invasive ductal carcinoma, Nottingham grade 3. Margins negative.", "site": "breast"},
    {"id": "r2", "text": "Invasive lobular carcinoma, Nottingham grade 2. Margins negative.", "site": "breast"},
    {"id": "r/3", "text": "Infiltrating ductal carcinoma, Nottingham grade 1.", "site": "Breast"},
]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/zwsi/conftest.py


@pytest.fixture
def reports_csv(tmp_path: Path) -> Path:
    path = tmp_path / "reports.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "site"])
        writer.writeheader()
        writer.writerows(REPORTS)
    return path


def test_generate_command_writes_a_synthetic_slide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.txt"
    report.write_text(REPORTS[0]["text"])
    out = tmp_path / "slide.tiff"
    code = main(["generate", "--report", str(report), "--out", str(out), "--seed", "4", "--model", "tiny",
                 "--random-init", *TINY_SLIDE])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out} (60 x 50 px at 2 µm/px, SYNTHETIC)" in printed
    with open_slide(out) as slide:
        assert slide.dimensions == (60, 50) and slide.mpp.x == pytest.approx(2.0) and slide.is_synthetic
        assert slide.properties["openslide.vendor"] == "aperio" and slide.objective_power == 5  # svs: 10 / 2 µm/px
    prov = read_provenance(out)
    assert prov is not None and prov.seed == 4 and prov.extra["report_id"] == "report"
    # the screened conditioning text is recorded (for `zwsi validate`'s report) and is the text the hash covers
    assert sha256_text(prov.extra["conditioning"]["text"]) == prov.report_sha256
    assert not (tmp_path / "slide.tiff.work").exists()


def test_generate_format_ome_tiff(tmp_path: Path) -> None:
    out = tmp_path / "slide.ome.tif"
    assert main(["generate", "--text", REPORTS[0]["text"], "--out", str(out), "--seed", "4", "--model", "tiny",
                 "--random-init", "--format", "ome-tiff", *TINY_SLIDE]) == 0
    with open_slide(out) as slide:
        assert slide.backend == "tiffslide" and slide.vendor == "zwsi"
        assert slide.mpp.x == pytest.approx(2.0) and slide.objective_power == 5 and slide.is_synthetic
        assert set(slide.associated_images) == {"thumbnail", "label", "macro"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--text", "Adenocarcinoma.", "--random-init"], "the built-in default model has trained weights"),
        (["--text", "Adenocarcinoma.", "--model", "tiny"], "random_init=True"),
        (["--text", "Adenocarcinoma.", "--model", "nowhere/model"], "neither a folder nor a pipeline preset"),
        (["--text", "Seen by Dr. John Smith on 03/04/2019. Adenocarcinoma.", "--model", "tiny", "--random-init"],
         "PhiFoundError"),
        (["--text", "Adenocarcinoma.", "--model", "nowhere/model", "--format", "ome-tiff"],  # before the model loads
         "'s.tiff' does not fit format 'ome-tiff': expected a name ending in .ome.tif, .ome.tiff"),
    ],
)
def test_generate_command_errors_exit_2(argv: list[str], message: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", *argv, "--out", str(tmp_path / "s.tiff"), "--seed", "1", *TINY_SLIDE])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.splitlines()) == 1, err  # the refusal alone: no estimate line before it
    assert not (tmp_path / "s.tiff").exists()


def test_report_and_text_exclude_each_other(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--report", "r.txt", "--text", "x", "--out", "s.tiff", "--seed", "1", *TINY_SLIDE])
    assert exc.value.code == 2


def test_cohort_selects_by_fields_and_resumes_as_a_whole(tiny: SlideGenerator, reports_csv: Path,
                                                         tmp_path: Path) -> None:
    from reports import load_reports

    records = load_reports(reports_csv)
    assert report_fields(records[0])["stated_histologic_type"] == "invasive ductal carcinoma"
    where = parse_where(["stated_histologic_type=Invasive Ductal Carcinoma", "site=breast"])
    assert [r.id for r in select_reports(records, where)] == ["r1", "r/3"]
    with pytest.raises(ValueError, match="unknown field 'tumour'"):
        parse_where(["tumour=x"])
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        parse_where(["grade"])

    out = tmp_path / "cohort"
    request = dict(per_report=2, request=SlideRequest(width_um=120, height_um=100, mpp=2.0, seed=5, steps=1),
                   where=where, progress=False)
    gen = SlideGenerator(Counting(tiny.transformer), tiny.vae, tiny.text_encoder,
                         config=dataclasses.replace(tiny.config, tissue=False),  # every window is a model window
                         model_sha256=tiny.model_sha256, name=tiny.name)
    manifest = generate_cohort(gen, records, out, **request)
    rows = read_manifest(manifest)
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert [(r["slide_path"], r["report_id"], r["k"]) for r in rows] == [
        ("r1_0.tiff", "r1", "0"), ("r1_1.tiff", "r1", "1"), ("r_3_0.tiff", "r/3", "0"), ("r_3_1.tiff", "r/3", "1")]
    assert [int(r["seed"]) for r in rows] == [cohort_seed(5, "r1", 0), cohort_seed(5, "r1", 1),
                                             cohort_seed(5, "r/3", 0), cohort_seed(5, "r/3", 1)]
    assert len({r["seed"] for r in rows}) == 4
    assert rows[2]["stated_grade"] == "Nottingham 1" and rows[0]["site"] == "breast"
    for r in rows:
        prov = read_provenance(out / r["slide_path"])
        assert prov is not None and prov.seed == int(r["seed"]) and prov.report_sha256 == r["report_sha256"]
    per_slide = gen.transformer.forwards // 4
    assert per_slide == 2  # one window per level, one step

    # resume: one slide lost, the manifest lost -> only that slide is generated again, same manifest
    (out / "r1_1.tiff").unlink()
    manifest.unlink()
    gen.transformer.forwards = 0
    generate_cohort(gen, records, out, **request)
    assert gen.transformer.forwards == per_slide
    again = read_manifest(manifest)
    keep = [c for c in MANIFEST_COLUMNS if c != "provenance_sha256"]  # the regenerated slide has a new timestamp
    assert [{c: r[c] for c in keep} for r in again] == [{c: r[c] for c in keep} for r in rows]

    with pytest.raises(ValueError, match="no report matches stated_grade in \\['9'\\]"):
        generate_cohort(gen, records, out, **{**request, "where": parse_where(["stated_grade=9"])})


def test_generate_cohort_command(reports_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    code = main(["generate-cohort", "--reports", str(reports_csv), "--where", "stated_grade=nottingham 2",
                 "--per-report", "1", "--out", str(out), "--seed", "0", "--model", "tiny", "--random-init",
                 *TINY_SLIDE])
    assert code == 0, capsys.readouterr().err
    rows = read_manifest(out / "manifest.csv")
    assert [(r["report_id"], r["slide_path"]) for r in rows] == [("r2", "r2_0.tiff")]
    assert (out / "r2_0.tiff").is_file()
    code = main(["generate-cohort", "--reports", str(reports_csv), "--where", "colour=red", "--per-report", "1",
                 "--out", str(out), "--seed", "0", "--model", "tiny", "--random-init", *TINY_SLIDE])
    assert code == 2 and "unknown field 'colour'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "config_text", "message"),
    [
        (["--width-um", "1e10"], None, "beyond the limit of 4e+10 (200,000² px); ask for a smaller slide, a coarser "
                                      "--mpp, or raise the limit with --max-pixels"),
        ([], "window_tokens: 100000\n", "window_tokens = 100000 (10,000,000,000 target tokens a window) is beyond the "
                                        "limit of 256"),
        ([], "batch_size: [1\n", "not valid YAML"),
        ([], "batch_size: !!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
        ([], "guidance: .nan\n", "generate config: guidance must be a finite number, got nan"),
        (["--out", "s.png"], None, "SlideFormatError: output 's.png' does not fit format 'svs'"),
    ],
)
def test_hostile_sizes_and_configs_exit_2_before_work(extra: list[str], config_text: str | None, message: str,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", "--text", "Adenocarcinoma.", "--model", "tiny", "--random-init", "--out",
            str(tmp_path / "s.tiff"), "--seed", "1", *TINY_SLIDE, *extra]
    if config_text is not None:
        (tmp_path / "c.yaml").write_text(config_text)
        argv += ["--config", str(tmp_path / "c.yaml")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "hacked" not in err
    assert len(err.splitlines()) == 1, err  # one line, even for a YAML parser's multi-line message
    assert sorted(p.name for p in tmp_path.iterdir()) == (["c.yaml"] if config_text is not None else [])


def test_generate_refuses_an_existing_output_unless_overwrite(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.tiff"
    out.write_bytes(b"precious")
    argv = ["generate", "--text", "Adenocarcinoma.", "--model", "tiny", "--random-init", "--out", str(out),
            "--seed", "1", *TINY_SLIDE, "--no-progress"]
    assert main(argv) == 2
    assert f"--out {out} exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_bytes() == b"precious"
    assert main([*argv, "--overwrite"]) == 0
    with open_slide(out) as slide:
        assert slide.is_synthetic
def test_a_cohort_with_a_phi_report_is_refused_before_any_slide(tiny: SlideGenerator, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal names the report and what was found (it raised AttributeError before: a string for findings)."""
    from reports import PhiFoundError, load_reports

    phi = tmp_path / "phi.csv"
    with phi.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "site"])
        writer.writeheader()
        writer.writerows([REPORTS[0], {"id": "leak", "text": "Seen by Dr. John Smith on 03/04/2019. Carcinoma.",
                                       "site": "breast"}])
    request = SlideRequest(width_um=120, height_um=100, mpp=2.0, seed=0, steps=1)
    with pytest.raises(PhiFoundError, match=r"1 selected report\(s\) \(leak\); nothing was generated.*likely holds PHI"):
        generate_cohort(tiny, load_reports(phi), tmp_path / "cohort", per_report=1, request=request, progress=False)
    assert not list((tmp_path / "cohort").glob("*.tiff"))
    code = main(["generate-cohort", "--reports", str(phi), "--per-report", "1", "--out", str(tmp_path / "c2"),
                 "--seed", "0", "--model", "tiny", "--random-init", *TINY_SLIDE])
    assert code == 2 and "(leak); nothing was generated" in capsys.readouterr().err
