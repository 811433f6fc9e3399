"""Shared test fixtures: the real data folder beside the checkout (`../shared/data`), skipped when absent.

The CC0 slide CMU-1-Small-Region.svs ships inside the package (`zwsi/default_model/slide/`), so tests that need
only it run in a fresh clone too: `shared_file` falls back to the bundled copy (the same bytes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ZWSI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
BUNDLED = {"wsi/CMU-1-Small-Region.svs": REPO_ROOT / "zwsi" / "default_model" / "slide" / "CMU-1-Small-Region.svs"}
"""Files of ../shared/data that the repository also holds (relative path there -> the copy here)."""


def shared_file(relative: str) -> Path:
    """Path of a real data file in ../shared/data (or its bundled copy), or skip the test with the reason."""
    path = SHARED_DATA / relative
    if not path.exists() and relative in BUNDLED:
        return BUNDLED[relative]
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (a fresh clone has no ../shared/data)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (a fresh clone has no ../shared/data)")
    return SHARED_DATA
