"""Tiling: a grid of windows at a target µm/px with a window size and overlap, filtered by tissue fraction.

Every window knows its grid index (row, col) and its level-0 box (x, y, width, height), so it can be read with
`Slide.read_region_mpp((window.x, window.y), grid.mpp, grid.size)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from slide_io.tissue import TissueMask
from slide_io.types import Mpp, Size

EdgeMode = Literal["cover", "inside"]


@dataclass(frozen=True)
class Window:
    """One window: grid index, level-0 top-left (x, y) and extent, and its tissue fraction (1.0 without a mask)."""

    row: int
    col: int
    x: int
    y: int
    width: int
    height: int
    tissue: float


@dataclass(frozen=True)
class TileGrid:
    """Windows of `size` pixels at `mpp`, `stride` apart; `shape` is (rows, cols) of the unfiltered grid."""

    mpp: Mpp
    size: Size
    stride: Size
    shape: tuple[int, int]
    windows: list[Window]

    def __len__(self) -> int:
        return len(self.windows)


def _count(extent: float, size: int, stride: int, edge: EdgeMode) -> int:
    if edge == "inside":
        return max(0, math.floor((extent - size) / stride + 1e-9) + 1) if extent >= size else 0
    return max(1, math.ceil((extent - size) / stride - 1e-9) + 1) if extent > size else 1


def tile_grid(
    dimensions: Size,
    slide_mpp: float | tuple[float, float],
    *,
    mpp: float | tuple[float, float],
    size: Size,
    overlap: int | tuple[int, int] = 0,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.0,
    edge: EdgeMode = "cover",
) -> TileGrid:
    """Grid of windows over a slide.

    Args:
        dimensions: level-0 (width, height) of the slide.
        slide_mpp: level-0 µm/px.
        mpp: µm/px of the windows.
        size: (width, height) of a window in pixels at `mpp`.
        overlap: pixels (at `mpp`) shared by neighbouring windows, one number or (x, y); 0 <= overlap < size.
        tissue: a tissue mask; each window gets its tissue fraction and windows below `min_tissue` are dropped.
        min_tissue: keep windows whose tissue fraction is >= this (0 keeps all).
        edge: 'cover' adds windows overhanging the right/bottom edge so the whole slide is covered (read_region
            pads overhang with white); 'inside' keeps only windows wholly inside the slide.

    Returns:
        A `TileGrid`, windows in row-major order.

    Raises:
        ValueError: non-positive size or mpp, overlap out of range, min_tissue outside [0, 1], unknown edge.
    """
    target, base = Mpp.of(mpp), Mpp.of(slide_mpp)
    w, h = (int(v) for v in size)
    ox, oy = (overlap, overlap) if isinstance(overlap, int) else (int(overlap[0]), int(overlap[1]))
    if w <= 0 or h <= 0:
        msg = f"size={size} must be positive (width, height)"
        raise ValueError(msg)
    if not (0 <= ox < w and 0 <= oy < h):
        msg = f"overlap={overlap} must satisfy 0 <= overlap < size={size}"
        raise ValueError(msg)
    if not 0.0 <= min_tissue <= 1.0:
        msg = f"min_tissue={min_tissue} must be in [0, 1]"
        raise ValueError(msg)
    if edge not in ("cover", "inside"):
        msg = f"edge={edge!r} is not one of ('cover', 'inside')"
        raise ValueError(msg)
    fx, fy = target.x / base.x, target.y / base.y  # level-0 px per window px
    extent_x, extent_y = dimensions[0] / fx, dimensions[1] / fy  # slide size at the target mpp
    sx, sy = w - ox, h - oy
    cols, rows = _count(extent_x, w, sx, edge), _count(extent_y, h, sy, edge)
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    xs = np.round(jj.ravel() * sx * fx).astype(int)
    ys = np.round(ii.ravel() * sy * fy).astype(int)
    w0, h0 = round(w * fx), round(h * fy)
    if tissue is not None:
        boxes = np.stack([xs, ys, np.full_like(xs, w0), np.full_like(ys, h0)], axis=1).astype(np.float64)
        fractions = tissue.fractions(boxes)
    else:
        fractions = np.ones(xs.shape)
    windows = [
        Window(int(i), int(j), int(x), int(y), w0, h0, float(f))
        for i, j, x, y, f in zip(ii.ravel(), jj.ravel(), xs, ys, fractions)
        if f >= min_tissue
    ]
    return TileGrid(target, (w, h), (sx, sy), (rows, cols), windows)
