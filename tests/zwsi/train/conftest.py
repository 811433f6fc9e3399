"""Fixtures of the training tests: one prepared TCGA-named dataset for the whole session (read-only: tests that
change it copy it first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_file
from tests.zwsi.train.tcga import PATIENTS, make_slides, prepare_args


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 slides (the CMU slide under the names of 5 TCGA patients) with their real reports, prepared at 4 and
    16 µm/px with the tiny random VAE and MiniLM features."""
    import torch

    from zwsi.cli import main

    reports = shared_file("reports/pathrepbench_tcga_reports_test.csv")
    root = tmp_path_factory.mktemp("prep")
    slides = make_slides(root / "slides", PATIENTS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert main(prepare_args(slides, reports, root / "ds")) == 0
    torch.set_num_threads(threads)
    return root / "ds"
