"""Fixtures for slide_io tests: small pyramids written in tmp_path with tifffile (independent of our writer)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import shared_file

CMU = "wsi/CMU-1-Small-Region.svs"
OME = "wsi/OS-1-detail.ome.tif"


def pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB pattern with sharp grid lines and noise: (height, width, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([(xx * 255 // max(width - 1, 1)), (yy * 255 // max(height - 1, 1)), (xx + yy) % 256], axis=-1)
    img[::64] = 0
    img[:, ::64] = 0
    img = img + rng.integers(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_tifffile_pyramid(path: Path, image: np.ndarray, levels: int, mpp: float | None, compression: str) -> list:
    """Levels as top-level IFDs (NewSubfileType=1 on reduced ones), 2×2 box means, resolution in CENTIMETER."""
    arrays = [image]
    for _ in range(levels - 1):
        arrays.append(np.asarray(Image.fromarray(arrays[-1]).reduce(2)))
    with tifffile.TiffWriter(path) as tw:
        for k, arr in enumerate(arrays):
            res = {} if mpp is None else {"resolution": (1e4 / (mpp * 2**k),) * 2, "resolutionunit": "CENTIMETER"}
            tw.write(arr, tile=(128, 128), compression=compression, photometric="rgb",
                     subfiletype=1 if k else 0, metadata=None, **res)
    return arrays


@pytest.fixture
def pyramid(tmp_path: Path) -> tuple[Path, list]:
    """A 3-level 512×384 deflate pyramid at 0.25 µm/px and its level arrays."""
    path = tmp_path / "pyramid.tif"
    arrays = write_tifffile_pyramid(path, pattern(384, 512), 3, 0.25, "zlib")
    return path, arrays


@pytest.fixture
def cmu() -> Path:
    return shared_file(CMU)


@pytest.fixture
def ome() -> Path:
    return shared_file(OME)
