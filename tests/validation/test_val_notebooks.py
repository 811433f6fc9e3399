"""The clinician notebooks execute top to bottom on small real data (nbclient, the venv's python3 kernel)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import slide_io
from slide_io.writer import write_pyramid
from tests.conftest import shared_file
from validation import perturb

NOTEBOOKS = Path(__file__).resolve().parents[2] / "validation" / "notebooks"


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The real CMU slide and a stand-in 'synthetic' slide: a blurred, stain-shifted copy written as a Z-WSI pyramid."""
    real = shared_file("wsi/CMU-1-Small-Region.svs")
    tmp = tmp_path_factory.mktemp("notebooks")
    with slide_io.open_slide(real) as slide:
        size, mpp = slide.dimensions, slide.mpp.x
        pixels = slide.read_region((0, 0), 0, size, as_array=True)
    fake = perturb.blur(perturb.stain_shift(pixels), 2.0)
    synthetic = write_pyramid(tmp / "synthetic.tif", lambda x, y, w, h: fake[y:y + h, x:x + w], size=size, mpp=mpp)
    return real, synthetic, tmp


def _execute(name: str, workdir: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            text.append(out.get("text", ""))
            data = out.get("data", {})
            text.append(data.get("text/markdown", ""))
            images += "image/png" in data
    return "\n".join(text), images


def test_side_by_side_review_notebook_runs(slides):
    real, synthetic, tmp = slides
    nb = _execute("side_by_side_review.ipynb", tmp, {"ZWSI_REAL_SLIDE": str(real), "ZWSI_SYNTHETIC_SLIDE": str(synthetic),
                                                     "OMP_NUM_THREADS": "1"})
    text, images = _outputs(nb)
    assert images >= 1  # the thumbnails and three-magnification crops
    assert "CMU-1-Small-Region.svs" in text and "synthetic.tif" in text
    assert "efficientnet_lite0" in text and "stain shift" in text  # the stand-in was stain-shifted and blurred


def test_reader_study_notebook_records_ratings_and_tests_against_chance(slides):
    real, synthetic, tmp = slides
    study = tmp / "study"
    nb = _execute("reader_study.ipynb", tmp, {"ZWSI_REAL_SLIDE": str(real), "ZWSI_SYNTHETIC_SLIDE": str(synthetic),
                                              "ZWSI_STUDY_DIR": str(study), "ZWSI_STUDY_TILES": "6",
                                              "OMP_NUM_THREADS": "1"})
    text, images = _outputs(nb)
    assert images >= 1
    key = json.loads((study / "key.json").read_text())
    assert sorted(key.values()).count("real") == 6 and sorted(key.values()).count("synthetic") == 6
    with (study / "ratings.csv").open() as fh:
        ratings = {row["id"]: row["rating"] for row in csv.DictReader(fh)}
    assert set(ratings) == set(key) and set(ratings.values()) <= {"real", "synthetic"}
    correct = sum(ratings[t] == key[t] for t in key)
    assert f"{correct}/12 correct" in text and "exact binomial test vs 0.5" in text
