"""Seam detection for window-by-window generation: gradient energy across window borders against inside windows.

A slide generated in windows of `window` px on a grid starting at `origin` has borders between columns
x − 1 and x for every x = origin_x + k·window (and likewise for rows). The energy of a border is the mean absolute
grey-level step across it; its reference is the same measure on the columns at offsets ±8, ±16, …, ±8·`n_ref`
from it, which lie inside the windows. The offsets are multiples of 8 so that JPEG's 8×8 block edges, which fall
on the borders of any window whose size is a multiple of 8, are in the reference too and cannot pose as seams.
A border's ratio is ≈ 1 when generation left no seam and grows with the step a seam adds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray

REF_STEP = 8
N_REF = 4
FLAG_RATIO = 2.0


@dataclass(frozen=True)
class Seam:
    """One border segment: axis 'x' (a vertical border at column `position`) or 'y' (a horizontal one at row
    `position`), spanning [start, end) along the border, with its energy ratio."""

    axis: str
    position: int
    start: int
    end: int
    ratio: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class SeamReport:
    """Seam score of an image: border energy / inside energy over all borders, and every segment's ratio."""

    score: float
    border_energy: float
    inside_energy: float
    segments: tuple[Seam, ...]
    flag_ratio: float

    @property
    def flagged(self) -> tuple[Seam, ...]:
        """Segments whose ratio reaches `flag_ratio`, worst first."""
        return tuple(sorted((s for s in self.segments if s.ratio >= self.flag_ratio), key=lambda s: -s.ratio))

    def to_dict(self) -> dict[str, object]:
        return {"score": self.score, "border_energy": self.border_energy, "inside_energy": self.inside_energy,
                "flag_ratio": self.flag_ratio, "n_segments": len(self.segments),
                "flagged": [s.to_dict() for s in self.flagged]}


def _grey(image: NDArray[np.generic]) -> NDArray[np.float64]:
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 3:
        arr = arr.mean(axis=-1)
    if arr.ndim != 2:
        msg = f"image must be (H, W) or (H, W, C); got shape {np.shape(image)}"
        raise ValueError(msg)
    return arr


def _vertical_borders(grey: NDArray[np.float64], window: int, origin: int, axis: str
                      ) -> tuple[list[Seam], float, float]:
    """Segments of the vertical borders of a (H, W) image; also summed border and reference energies."""
    h, w = grey.shape
    steps = np.abs(np.diff(grey, axis=1))  # (H, W-1); steps[:, c] is between columns c and c+1
    segments: list[Seam] = []
    border_sum = ref_sum = 0.0
    reach = REF_STEP * N_REF
    for x in range(origin + window, w, window):
        c = x - 1
        refs = [c + k * REF_STEP for k in range(-N_REF, N_REF + 1) if k and 0 <= c + k * REF_STEP < w - 1]
        if x - reach < 1 or x + reach > w - 1 or not refs:
            continue
        for start in range(0, h, window):
            end = min(h, start + window)
            border = float(steps[start:end, c].mean())
            ref = float(steps[start:end, refs].mean())
            border_sum += border * (end - start)
            ref_sum += ref * (end - start)
            segments.append(Seam(axis, x, start, end, border / max(ref, 1e-6)))
    return segments, border_sum, ref_sum


def seam_report(image: NDArray[np.generic], window: int, origin: tuple[int, int] = (0, 0),
                flag_ratio: float = FLAG_RATIO) -> SeamReport:
    """Seam score and per-segment ratios of an image generated in `window`-px windows.

    Args:
        image: (H, W, 3) or (H, W) pixels of one level (or a region of it whose top-left is the grid point
            `origin` away from the first border, i.e. borders at origin + k·window).
        window: window side in pixels (≥ 2·8·N_REF).
        origin: (x, y) offset of the window grid in this image.
        flag_ratio: ratio at or above which a segment is flagged as a seam.

    Returns:
        A `SeamReport`; `score` is NaN when the image is smaller than two windows on both axes.

    Raises:
        ValueError: bad image shape or window.
    """
    if window < 2 * REF_STEP * N_REF:
        msg = f"window={window} px is too small; seams are measured for windows of at least {2 * REF_STEP * N_REF} px"
        raise ValueError(msg)
    grey = _grey(image)
    seg_x, bx, rx = _vertical_borders(grey, window, origin[0] % window, "x")
    seg_y, by, ry = _vertical_borders(grey.T, window, origin[1] % window, "y")
    border, ref = bx + by, rx + ry
    score = border / ref if ref > 0 else float("nan")
    return SeamReport(float(score), border, ref, tuple(seg_x + seg_y), flag_ratio)


# ---- the layout: outlines along the window grid, periodic stripes ---------------------------------------------------
GLASS_MIN = 215  # a block whose mean is at least this bright in every channel ...
GLASS_MAX_SPREAD = 18  # ... and whose channels differ by at most this much is blank glass


def glass_blocks(image: NDArray[np.uint8], block: int = 16) -> NDArray[np.bool_]:
    """``(h // block, w // block)`` bool: blocks whose mean colour is blank glass (bright and unsaturated)."""
    arr = np.asarray(image, dtype=np.float64)[..., :3]
    h, w = (arr.shape[0] // block) * block, (arr.shape[1] // block) * block
    if h == 0 or w == 0:
        raise ValueError(f"image of {arr.shape[1]}x{arr.shape[0]} px holds no {block} px block")
    means = arr[:h, :w].reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))  # (H, W, 3)
    return (means.min(axis=-1) >= GLASS_MIN) & (np.ptp(means, axis=-1) <= GLASS_MAX_SPREAD)


def outline_grid_ratio(image: NDArray[np.uint8], window: int, block: int = 16) -> float:
    """How much more often than chance the outline of what is not glass runs along the window grid.

    On ``block``-pixel block means, outline blocks are those with a 4-neighbour of the other kind (glass vs not). A
    block is on the grid when it touches a window border (``window`` px, from the top-left); the ratio is the grid
    share of outline blocks over the grid share of all blocks: ≈ 1 when outlines ignore the grid (a real slide),
    well above 1 when tissue comes in window-shaped blocks. NaN without any outline.

    Raises:
        ValueError: ``window`` not a multiple of ``block`` of at least 2 blocks.
    """
    if window % block or window < 2 * block:
        raise ValueError(f"window={window} px must be a multiple of block={block} px and at least 2 blocks")
    glass = glass_blocks(image, block)
    edge = np.zeros_like(glass)
    edge[1:] |= glass[1:] != glass[:-1]
    edge[:-1] |= glass[1:] != glass[:-1]
    edge[:, 1:] |= glass[:, 1:] != glass[:, :-1]
    edge[:, :-1] |= glass[:, 1:] != glass[:, :-1]
    k = window // block
    rows, cols = np.arange(glass.shape[0]) % k, np.arange(glass.shape[1]) % k
    on_grid = ((rows == 0) | (rows == k - 1))[:, None] | ((cols == 0) | (cols == k - 1))[None, :]
    if not edge.any():
        return float("nan")
    return float(on_grid[edge].mean() / on_grid.mean())


def stripe_peak_ratio(image: NDArray[np.generic], min_period: int = 8, max_period: int = 256) -> float:
    """Strength of periodic horizontal stripes: the row profile's (mean grey per row) largest spectral peak at
    periods ``min_period``..``max_period`` px over the median magnitude of its neighbouring frequencies (±8 bins)."""
    grey = _grey(image)
    profile = grey.mean(axis=1) - grey.mean()
    n = len(profile)
    if n < 2 * max_period:
        raise ValueError(f"image of {n} rows is too short for periods up to {max_period} px (need {2 * max_period})")
    mag = np.abs(np.fft.rfft(profile * np.hanning(n)))
    freqs = np.fft.rfftfreq(n)
    band = np.flatnonzero((freqs >= 1 / max_period) & (freqs <= 1 / min_period))
    peak = band[np.argmax(mag[band])]
    neighbours = np.r_[mag[max(peak - 8, 1) : peak - 1], mag[peak + 2 : peak + 9]]
    return float(mag[peak] / max(np.median(neighbours), 1e-12))
