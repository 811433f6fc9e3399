"""Bounded memory whatever the pyramid: thumbnails, resampled reads and tissue masks ask the backend for at most
`MAX_READ_PIXELS` at a time, and the block-by-block result equals the one-shot read."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile

import slide_io
import slide_io.reader as reader
import slide_io.tissue as tissue
from tests.slide_io.conftest import pattern

REPO = Path(__file__).resolve().parents[2]


def write_single_level(path: Path, size: int, tile: int = 256, mpp: float = 0.25) -> None:
    """A single-level tiled TIFF of `size`² px (deflate), every tile the same pale tile encoded once."""
    data = np.full((tile, tile, 3), 235, np.uint8)
    data[tile // 4: tile // 2, tile // 4: tile // 2] = (150, 60, 140)  # a purple patch: tissue-like
    encoded = zlib.compress(data.tobytes())
    n = ((size + tile - 1) // tile) ** 2
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write((encoded for _ in range(n)), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                 compression="zlib", photometric="rgb", resolution=(1e4 / mpp, 1e4 / mpp),
                 resolutionunit="CENTIMETER", metadata=None)


class _Spy:
    """Wraps a slide backend's `read`, recording the largest region asked for."""

    def __init__(self, slide: slide_io.Slide) -> None:
        self.largest = 0
        self.reads = 0
        inner = slide._backend.read

        def read(location, level, size):  # type: ignore[no-untyped-def]
            self.largest = max(self.largest, size[0] * size[1])
            self.reads += 1
            return inner(location, level, size)

        slide._backend.read = read  # type: ignore[method-assign]


def test_blockwise_resample_equals_one_shot_and_respects_the_bound(tmp_path, monkeypatch):
    path = tmp_path / "single.tif"
    image = pattern(900, 1300, seed=3)
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", compression="zlib",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER", metadata=None)
    with slide_io.open_slide(path) as slide:
        whole_mpp = slide.read_region_mpp((37, 11), 1.7, (300, 200))
        whole_thumb = np.asarray(slide.get_thumbnail((256, 256)))
    monkeypatch.setattr(reader, "MAX_READ_PIXELS", 96 * 96)
    with slide_io.open_slide(path) as slide:
        spy = _Spy(slide)
        blocks_mpp = slide.read_region_mpp((37, 11), 1.7, (300, 200))
        blocks_thumb = np.asarray(slide.get_thumbnail((256, 256)))
    assert spy.largest <= 96 * 96 and spy.reads > 20
    for a, b in ((whole_mpp, blocks_mpp), (whole_thumb, blocks_thumb)):
        assert a.shape == b.shape
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 8 and (diff <= 1).mean() > 0.995  # Pillow's fixed-point rounding at block edges


def test_a_single_level_slide_is_never_read_whole(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    write_single_level(path, 2048)  # 4 M px, read with a bound of 0.25 M (the default bound is 16 M)
    monkeypatch.setattr(reader, "MAX_READ_PIXELS", 512 * 512)
    with slide_io.open_slide(path) as slide:
        spy = _Spy(slide)
        thumb = np.asarray(slide.get_thumbnail((256, 256)))
        mask = slide_io.detect_tissue(slide, mpp=4.0)
    assert spy.largest <= 512 * 512
    assert thumb.shape == (256, 256, 3) and mask.mask.shape == (128, 128)
    tile_mean = np.array([235, 235, 235]) * 0.9375 + np.array([150, 60, 140]) * 0.0625  # 64² purple in 256² tiles
    assert np.abs(thumb.reshape(-1, 3).mean(0) - tile_mean).max() < 1.5


def test_tissue_mask_is_coarsened_to_stay_bounded(tmp_path, monkeypatch):
    path = tmp_path / "big.tif"
    write_single_level(path, 2048)
    monkeypatch.setattr(tissue, "MAX_MASK_PIXELS", 10_000)
    with slide_io.open_slide(path) as slide:
        mask = slide_io.detect_tissue(slide, mpp=1.0)  # 512² = 262,144 px asked, 10,000 allowed
    assert mask.mask.size <= 10_000 * 1.05 and mask.mpp.x == pytest.approx(5.12, rel=1e-6)


@pytest.mark.slow
def test_thumbnail_of_a_50000_px_single_level_tiff_stays_under_1_gb(tmp_path):
    path = tmp_path / "huge.tif"
    write_single_level(path, 50_000)  # 7.5 GB if read whole
    out = tmp_path / "thumb.png"
    script = textwrap.dedent(f"""
        import resource, sys
        from zwsi.cli import main
        code = main(["slide", "thumbnail", {str(path)!r}, {str(out)!r}, "--size", "512"])
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=3600)
    assert done.returncode == 0, done.stderr
    peak_kb = int(done.stdout.strip().splitlines()[-1])
    assert peak_kb < 1_000_000, f"peak RSS {peak_kb / 1e3:.0f} MB"
    assert out.is_file()
