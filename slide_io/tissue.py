"""Tissue detection: a boolean mask at a stated µm/px, and the tissue fraction of any level-0 box.

Method: on an RGB overview at `mpp`, Otsu thresholds on HSV saturation and on mean optical density
(OD = -log10((I + 1) / 256)); a pixel is tissue when it passes either (each threshold has a floor, so a slide of
glass only, whose Otsu split falls inside the noise, gives an empty mask), unless it is near-black (scanner fill).
The mask is then cleaned: closing with a disk of `closing_um`, objects and holes smaller than `min_area_um2` are
removed. Works on H&E and on IHC (DAB + haematoxylin), where saturation is low in pale DAB but OD is not.

`banded_tissue_mask` does the same for an image read in row bands (a generated slide level in a pixel store).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray
from skimage import color, filters, morphology

from slide_io.types import Mpp

if TYPE_CHECKING:
    from slide_io.reader import Slide

SATURATION_FLOOR = 0.08
MAX_MASK_PIXELS = 4_000_000
"""`detect_tissue` coarsens its µm/px so the mask stays under this many pixels (the mask works at ~200 B a pixel)."""
OD_FLOOR = 0.12
BLACK_LEVEL = 25


@dataclass(frozen=True)
class TissueMask:
    """Boolean tissue mask, (rows, cols) at `mpp`, covering the slide from level-0 pixel (0, 0).

    Attributes:
        mask: True where tissue.
        mpp: µm/px of the mask.
        slide_mpp: level-0 µm/px of the slide it was computed on.
    """

    mask: NDArray[np.bool_]
    mpp: Mpp
    slide_mpp: Mpp

    @property
    def fraction(self) -> float:
        """Tissue fraction of the whole mask."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction_at(self, x: float, y: float, width: float, height: float) -> float:
        """Tissue fraction of the level-0 box (x, y, width, height); parts outside the mask count as background."""
        return float(self.fractions(np.array([[x, y, width, height]], dtype=np.float64))[0])

    def fractions(self, boxes: NDArray[np.float64]) -> NDArray[np.float64]:
        """Tissue fraction of each level-0 box (N, 4) = (x, y, width, height), via an integral image."""
        sx, sy = self.slide_mpp.x / self.mpp.x, self.slide_mpp.y / self.mpp.y
        rows, cols = self.mask.shape
        integral = np.zeros((rows + 1, cols + 1), np.int64)
        integral[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        c0 = np.clip(np.floor(boxes[:, 0] * sx), 0, cols).astype(int)
        r0 = np.clip(np.floor(boxes[:, 1] * sy), 0, rows).astype(int)
        c1 = np.clip(np.ceil((boxes[:, 0] + boxes[:, 2]) * sx), 0, cols).astype(int)
        r1 = np.clip(np.ceil((boxes[:, 1] + boxes[:, 3]) * sy), 0, rows).astype(int)
        area = np.maximum(np.ceil(boxes[:, 2] * sx) * np.ceil(boxes[:, 3] * sy), 1)
        inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return np.where((r1 > r0) & (c1 > c0), inside / area, 0.0)


def _otsu(values: NDArray[np.float64], floor: float) -> float:
    if values.size == 0 or float(values.max() - values.min()) < 1e-6:
        return float("inf") if values.size == 0 or float(values.max()) < floor else floor
    return max(float(filters.threshold_otsu(values)), floor)


def tissue_mask_rgb(rgb: NDArray[np.uint8], mpp: float, *, closing_um: float = 16.0,
                    min_area_um2: float = 10_000.0) -> NDArray[np.bool_]:
    """Tissue mask of an (h, w, 3) uint8 RGB image whose pixels are `mpp` µm wide.

    Args:
        rgb: the overview image, white (glass) background.
        mpp: its µm/px (sets the cleanup sizes).
        closing_um: radius of the closing disk in µm.
        min_area_um2: smallest tissue object and largest filled hole, in µm².

    Returns:
        (h, w) bool mask; all False when the image shows glass only.
    """
    if rgb.ndim != 3 or rgb.shape[2] < 3 or rgb.dtype != np.uint8:
        msg = f"rgb must be (h, w, 3) uint8, got shape {rgb.shape} dtype {rgb.dtype}"
        raise ValueError(msg)
    rgb = rgb[..., :3]
    sat = color.rgb2hsv(rgb)[..., 1]
    od = (-np.log10((rgb.astype(np.float64) + 1.0) / 256.0)).mean(axis=2)
    not_black = rgb.max(axis=2) > BLACK_LEVEL
    ts, to = _otsu(sat[not_black], SATURATION_FLOOR), _otsu(od[not_black], OD_FLOOR)
    mask = ((sat > ts) | (od > to)) & not_black
    px_area = mpp * mpp
    radius = max(0, round(closing_um / mpp))
    if radius:
        mask = morphology.closing(mask, morphology.disk(radius))
    min_px = max(1, round(min_area_um2 / px_area))
    mask = morphology.remove_small_objects(mask, max_size=min_px)
    mask = morphology.remove_small_holes(mask, max_size=min_px)
    return np.asarray(mask, dtype=bool)


def detect_tissue(slide: Slide, mpp: float = 8.0, **options: float) -> TissueMask:
    """Tissue mask of a whole slide at `mpp` µm/px (read from the best level, resampled).

    Args:
        slide: an open slide with a µm/px (or one supplied to `open_slide`).
        mpp: resolution of the mask; 8 µm/px (≈1.25×) is enough for tiling decisions. Coarser when the mask would
            exceed `MAX_MASK_PIXELS` (the returned mask's `mpp` says which).
        **options: `closing_um`, `min_area_um2` for `tissue_mask_rgb`.

    Raises:
        MissingMppError: the slide has no µm/px.
    """
    base = slide.mpp
    target = Mpp.of(mpp)
    w0, h0 = slide.dimensions
    area = (w0 * base.x / target.x) * (h0 * base.y / target.y)
    if area > MAX_MASK_PIXELS:  # a coarser mask: memory stays bounded whatever the slide size
        f = math.sqrt(area / MAX_MASK_PIXELS)
        target = Mpp(target.x * f, target.y * f)
    size = (max(1, round(w0 * base.x / target.x)), max(1, round(h0 * base.y / target.y)))
    rgb = slide.read_region_mpp((0, 0), target, size)
    mask = tissue_mask_rgb(rgb, (target.x + target.y) / 2, **options)
    return TissueMask(mask, target, base)


MAX_MASK_PIXELS = 4_000_000
"""A banded tissue mask is at most about this many pixels (tissue_mask_rgb holds ~200 B per pixel while it works)."""


def mask_factor(mpp: float, size: tuple[int, int], tissue_mpp: float) -> int:
    """Image pixels per mask pixel side: ``round(tissue_mpp / mpp)``, raised so the mask stays under
    `MAX_MASK_PIXELS` for an image of ``size`` (height, width)."""
    h, w = size
    return max(1, round(tissue_mpp / mpp), math.ceil(math.sqrt(h * w / MAX_MASK_PIXELS)))


def block_mean(rgb: NDArray[np.uint8], f: int) -> NDArray[np.uint8]:
    """Mean of f x f blocks of an (h, w, 3) uint8 image (edge blocks partial, edge-padded), rounded, uint8."""
    if f == 1:
        return rgb
    h, w = rgb.shape[:2]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.pad(rgb, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge").astype(np.float32)
    means: NDArray[np.uint8] = np.rint(padded.reshape(hp // f, f, wp // f, f, 3).mean(axis=(1, 3))).astype(np.uint8)
    return means


def banded_tissue_mask(read_rows: Callable[[int, int], NDArray[np.uint8]], size: tuple[int, int], mpp: float,
                       tissue_mpp: float) -> tuple[NDArray[np.bool_], float]:
    """Tissue mask of an image too large for memory, read in row bands, at about ``tissue_mpp`` µm/px.

    The bands are averaged over f x f blocks (`mask_factor`: about tissue_mpp / mpp, coarser for a mask that would
    exceed `MAX_MASK_PIXELS`), then `tissue_mask_rgb` decides; memory holds one band and the small image.

    Args:
        read_rows: ``read_rows(y0, y1)`` -> rows [y0, y1) of the image, (y1 - y0, w, 3) uint8 (e.g. a level of a
            pixel `WindowStore`).
        size: (height, width) of the image.
        mpp: its µm/px.
        tissue_mpp: the mask's target µm/px.

    Returns:
        (mask, mask_mpp): the bool mask anchored at the image's top-left corner and its µm/px.
    """
    f = mask_factor(mpp, size, tissue_mpp)
    h, w = size
    band = f * max(1, 2**22 // (w * f))  # about 4 M pixels per band (12 MB uint8) whatever the image width
    rows = [block_mean(read_rows(y, min(y + band, h)), f) for y in range(0, h, band)]
    return tissue_mask_rgb(np.concatenate(rows, axis=0), mpp * f), mpp * f
