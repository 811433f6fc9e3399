"""Seamless windows (DESIGN §3): a window's overlap with known latents is re-imposed while it is sampled and
cross-faded once its level is finished.

A window's target (`zwsi.planner.target_box`) extends ``overlap_tokens`` beyond the window on each side. Where that
overlap lies over a window already known when this one is sampled — background filled before any phase, or a window
of an earlier phase — the latents are known. After every sampling step they are put back, noised to the new sigma
with the window's own seeded noise (`KnownLatents`; RePaint's replacement, Lugmayr et al. 2022), so the model
generates the window as a continuation of its neighbours rather than beside them.

Each window's raw output over its whole target is kept (the region store). When every window of the level is
written, `crossfade_level` blends each known window's border toward what the later windows made of it, with linear
ramps that reach the later window's values at the shared edge (as MultiDiffusion fuses overlapping windows,
Bar-Tal et al. 2023). The blend reads only raw outputs, never its own results, so a level comes out the same
whatever the batch size, number of processes or interruptions.

Overlap over a window that is generated later (or lies beyond the canvas) is generated and discarded: that window
will see this one as known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from zwsi.planner import SlidePlan, Window, target_box

ReadBox = Callable[[tuple[int, int], tuple[int, int]], np.ndarray]
"""``read((row0, row1), (col0, col1)) -> (C, h, w)`` latents of one level's canvas."""


def known_mask(plan: SlidePlan, window: Window, known: Callable[[int, int], bool]) -> np.ndarray:
    """``(h, w)`` bool over the window's `target_box`: True on latents of other windows for which ``known(row, col)``."""
    cfg = plan.config
    (r0, r1), (c0, c1) = target_box(plan, window)
    n = cfg.window_latents
    rows = np.arange(r0, r1) // n  # window row of every latent row of the box
    cols = np.arange(c0, c1) // n
    mask = np.zeros((r1 - r0, c1 - c0), dtype=bool)
    for wr in np.unique(rows):
        for wc in np.unique(cols):
            if (wr, wc) != (window.row, window.col) and known(int(wr), int(wc)):
                mask[np.ix_(rows == wr, cols == wc)] = True
    return mask


@dataclass
class KnownLatents:
    """What is known of a batch of targets, and the imposer that puts it back at every sampling step.

    Attributes:
        values: per target, ``(C, 1, h, w)`` clean known latents (anything where the mask is False).
        masks: per target, ``(1, 1, h, w)`` bool, True where known.
        noise: per target, ``(C, 1, h, w)`` the window's seeded noise (the sampler's starting point).
    """

    values: list[Tensor]
    masks: list[Tensor]
    noise: list[Tensor]

    def __call__(self, xs: list[Tensor], sigma: float) -> list[Tensor]:
        """``x <- where(known, (1 - sigma) * known + sigma * noise, x)`` for every target (`zwsi.sampling.Imposer`)."""
        out = []
        for x, v, m, e in zip(xs, self.values, self.masks, self.noise):
            out.append(torch.where(m, (1.0 - sigma) * v + sigma * e, x) if bool(m.any()) else x)
        return out


def band_weights(plan: SlidePlan, window: Window, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` weights of ``window``'s raw output over a box of its overlap (latent coordinates of the level).

    Along each axis the weight is 1 within the window's own span and falls linearly across the overlap,
    ``(o - d + 0.5) / o`` at ``d`` latents outside (``o`` = overlap latents): close to 1 at the shared edge, close to
    0 at the overlap's far side. A corner of the overlap takes the product of both axes.
    """
    cfg = plan.config
    o = cfg.overlap_tokens * cfg.patch_size
    (wr0, wr1), (wc0, wc1) = window.latent_box(cfg)

    def axis(start: int, stop: int, lo: int, hi: int) -> np.ndarray:
        pos = np.arange(start, stop)
        d = np.maximum(lo - pos, 0) + np.maximum(pos - (hi - 1), 0)  # latents outside [lo, hi)
        return np.where(d == 0, 1.0, (o - d + 0.5) / o).astype(np.float32)

    return np.outer(axis(*rows, wr0, wr1), axis(*cols, wc0, wc1))


def _intersect(a: tuple[tuple[int, int], tuple[int, int]], b: tuple[tuple[int, int], tuple[int, int]]):
    (ar, ac), (br, bc) = a, b
    rows, cols = (max(ar[0], br[0]), min(ar[1], br[1])), (max(ac[0], bc[0]), min(ac[1], bc[1]))
    return (rows, cols) if rows[0] < rows[1] and cols[0] < cols[1] else None


def contributors(
    plan: SlidePlan, level: int, generated: Callable[[int, int], bool], background: Callable[[int, int], bool]
) -> Iterator[tuple[Window, list[tuple[Window, tuple[tuple[int, int], tuple[int, int]]]]]]:
    """Per window of the level whose border later windows overlapped while it was known: the window and the list of
    (later window, box of the window's latents it covers).

    ``generated(row, col)``: the window was sampled by the model; ``background(row, col)``: it was filled as glass
    before any phase. A model window W overlaps a known window N when N is background, or both are model windows
    and N's phase is earlier than W's.
    """
    cfg = plan.config
    if cfg.overlap_tokens == 0:
        return
    rows, cols = plan.level(level).grid
    for n_win in plan.windows(level):
        is_bg = background(n_win.row, n_win.col)
        if not (is_bg or generated(n_win.row, n_win.col)):
            continue
        core = n_win.latent_box(cfg)
        found = []
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                r, c = n_win.row + dr, n_win.col + dc
                if (dr, dc) == (0, 0) or not (0 <= r < rows and 0 <= c < cols) or not generated(r, c):
                    continue
                w_win = plan.window(level, r, c)
                if not (is_bg or n_win.phase < w_win.phase):
                    continue
                box = _intersect(target_box(plan, w_win), core)
                if box is not None:
                    found.append((w_win, box))
        if found:
            yield n_win, found


def crossfade(core: np.ndarray, later: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Blend a known window's raw latents with what later windows made of them.

    ``core + sum_k w_k (x_k - core) / max(1, sum_k w_k)``: where one later window reaches its shared edge (w = 1) the
    result is its value, where several meet (a corner) their mean, far from any edge the window's own.

    Args:
        core: ``(C, h, w)`` the known window's raw latents over a box.
        later: per later window, ``(weights (h, w), values (C, h, w))`` over the same box (weights 0 outside its
            overlap).
    """
    total = np.zeros(core.shape[1:], dtype=np.float32)
    acc = np.zeros(core.shape, dtype=np.float32)
    base = core.astype(np.float32)
    for w, x in later:
        total += w
        acc += w[None] * (x.astype(np.float32) - base)
    return base + acc / np.maximum(total, 1.0)[None]


def crossfade_level(
    plan: SlidePlan,
    level: int,
    *,
    generated: Callable[[int, int], bool],
    background: Callable[[int, int], bool],
    read_raw: Callable[[Window, tuple[int, int], tuple[int, int]], np.ndarray],
    write: Callable[[int, int, np.ndarray], None],
) -> int:
    """Cross-fade every known window's border with the later windows that overlapped it (see the module docstring).

    Args:
        plan: the slide plan.
        level: the level, all of whose windows are written.
        generated, background: as in `contributors`.
        read_raw: ``read_raw(window, rows, cols) -> (C, h, w)`` the raw output of a window (its own sampled target,
            or the background fill) over latent rows/cols of the level inside its target box.
        write: ``write(row0, col0, latents)`` into the level's latents.

    Returns:
        The number of windows whose latents changed.
    """
    changed = 0
    for n_win, found in contributors(plan, level, generated, background):
        # only the rows/cols any later window reaches are rewritten: the union box of the overlaps
        ur = (min(b[0][0] for _, b in found), max(b[0][1] for _, b in found))
        uc = (min(b[1][0] for _, b in found), max(b[1][1] for _, b in found))
        core = read_raw(n_win, ur, uc)
        later = []
        for w_win, ((br0, br1), (bc0, bc1)) in found:
            weights = np.zeros((ur[1] - ur[0], uc[1] - uc[0]), dtype=np.float32)
            values = np.zeros(core.shape, dtype=np.float32)
            sl = (slice(br0 - ur[0], br1 - ur[0]), slice(bc0 - uc[0], bc1 - uc[0]))
            weights[sl] = band_weights(plan, w_win, (br0, br1), (bc0, bc1))
            values[(slice(None), *sl)] = read_raw(w_win, (br0, br1), (bc0, bc1))
            later.append((weights, values))
        write(ur[0], uc[0], crossfade(core, later))
        changed += 1
    return changed
