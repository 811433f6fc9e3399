"""The eight flips and quarter turns of an image (the dihedral group of the square), for arrays and for tiles of a
transformed slide read region by region.

``k`` in 0..7: ``np.rot90`` (counter-clockwise) ``k % 4`` times, then a left-right flip when ``k >= 4``. Histology has
no preferred orientation, so these are valid augmentations (``zwsi slide convert --dihedral K`` writes one).

    tile = dihedral(array, 5)
    (r0, r1), (c0, c1) = source_box((y0, y1), (x0, x1), 5, (h, w))   # where an output tile comes from
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def _check(k: int) -> None:
    if not (isinstance(k, int) and 0 <= k <= 7):
        raise ValueError(f"dihedral k={k!r} must be an integer 0..7 (k % 4 quarter turns, then a flip when k >= 4)")


def dihedral(array: NDArray[np.generic], k: int) -> NDArray[np.generic]:
    """Transform ``k`` of an ``(h, w, ...)`` array (a contiguous copy)."""
    _check(k)
    out = np.rot90(array, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def output_shape(shape: tuple[int, int], k: int) -> tuple[int, int]:
    """``(h, w)`` of transform ``k`` of an ``(h, w)`` image."""
    _check(k)
    h, w = shape
    return (w, h) if k % 2 else (h, w)


def _source_index(i: int, j: int, k: int, h: int, w: int) -> tuple[int, int]:
    """The input ``(row, col)`` that transform ``k`` of an ``(h, w)`` input puts at output ``(i, j)``."""
    r = k % 4
    if k >= 4:
        j = (w if r % 2 == 0 else h) - 1 - j
    return [(i, j), (j, w - 1 - i), (h - 1 - i, w - 1 - j), (h - 1 - j, i)][r]


def source_box(rows: tuple[int, int], cols: tuple[int, int], k: int, shape: tuple[int, int]
               ) -> tuple[tuple[int, int], tuple[int, int]]:
    """The input box whose transform ``k`` is the output box ``rows`` x ``cols`` (half-open) of an ``(h, w)`` input:
    read it, apply `dihedral`, and the result is exactly that output tile."""
    _check(k)
    h, w = shape
    corners = [_source_index(i, j, k, h, w) for i in (rows[0], rows[1] - 1) for j in (cols[0], cols[1] - 1)]
    a, b = zip(*corners)
    return (min(a), max(a) + 1), (min(b), max(b) + 1)
