"""The training tests' dataset: the CMU slide under the names of real TCGA patients whose reports are in
../shared/data (prepared once per session by the `prepared` fixture of tests/zwsi/train/conftest.py)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import shared_file

# Real TCGA patients of the corpus (their reports pass the PHI screen): two breast, one stomach, one GBM, one uveal.
PATIENTS = ["TCGA-A8-A09E", "TCGA-AN-A0AM", "TCGA-SW-A7EA", "TCGA-76-6661", "TCGA-V4-A9ED"]
GEOMETRY = ["--mpp", "4.0", "--coarsest-mpp", "16.0", "--window-tokens", "4", "--context-tokens", "1",
            "--overview-margin", "1", "--encode-margin", "0", "--text-max-length", "64"]


def make_slides(folder: Path, patients: list[str]) -> Path:
    """The CMU slide under TCGA-style names (one per patient), as symlinks."""
    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    folder.mkdir(parents=True, exist_ok=True)
    for p in patients:
        (folder / f"{p}-01Z-00-DX1.svs").symlink_to(svs)
    return folder


def prepare_args(slides: Path, reports: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--slides", str(slides), "--reports", str(reports), "--out", str(out), "--random-init",
            "--text-encoder", "minilm", "--splits", "0.6,0.2,0.2", "--no-progress", *GEOMETRY, *extra]
