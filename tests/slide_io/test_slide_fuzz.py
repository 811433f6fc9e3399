"""Seeded mutation fuzzing of real slides through every reader path (tests/slide_io/fuzz_slides.py): every case is
a named SlideError or a correct read — never another exception, a crash, or an allocation beyond the bound."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import slide_io
from tests.slide_io.fuzz_slides import run_cases

BUNDLED = Path(__file__).resolve().parents[2] / "zwsi" / "default_model" / "slide" / "CMU-1-Small-Region.svs"


def _sources(tmp_path: Path) -> list[Path]:
    """The bundled real Aperio slide and a small Z-WSI pyramid written from it (our own writer's layout)."""
    own = tmp_path / "own.tiff"
    with slide_io.open_slide(BUNDLED) as slide:
        region = slide.read_region((600, 800), 0, (700, 500), as_array=True)
    slide_io.write_pyramid(own, lambda x, y, w, h: np.ascontiguousarray(region[y:y + h, x:x + w]), size=(700, 500),
                           mpp=0.5, tile_size=128, compression="jpeg")
    return [BUNDLED, own]


def _check(results: list[dict[str, str]], n: int) -> Counter[str]:
    bugs = [r for r in results if r["outcome"].startswith("bug")]
    assert len(results) == n
    assert bugs == [], "\n".join(f"case {b['case']} {b['source']} {b['mutation']}: {b['outcome']}" for b in bugs[:10])
    return Counter(r["outcome"] for r in results)


def test_fuzz_a_few_dozen_cases(tmp_path):
    counts = _check(run_cases(_sources(tmp_path), 30, seed=1, folder=tmp_path), 30)
    assert counts["ok"] > 0 and sum(v for k, v in counts.items() if k.startswith("error:")) > 0


@pytest.mark.slow
def test_fuzz_a_few_hundred_cases(tmp_path):
    counts = _check(run_cases(_sources(tmp_path), 300, seed=2, folder=tmp_path), 300)
    print(dict(counts))
