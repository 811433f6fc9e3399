"""The slide planner: magnification ladder, window grids, 2×2 phases, tissue windows, seeds and window sequences.

Geometry (DESIGN §3). A slide of ``height_um × width_um`` is generated on a ladder of levels, finest first in the
index (level 0 = the requested mpp, as in a slide pyramid and ``slide_io.WindowStore``), each ``factor`` times
coarser than the one below; generation runs from the coarsest level down. Every level has one canvas of tokens
(1 token = ``patch_size`` latents = ``patch_size * vae_factor`` pixels) anchored at the slide's top-left corner, so
parent token ``i`` covers child tokens ``[i*s, (i+1)*s)`` with ``s = factor``.

Edges: a level's canvas is the slide extent rounded **up to whole windows**; every window has the same size, and
the padding beyond the slide (less than one window per side, bottom/right only) is generated like the rest and
cropped when the slide is written (``Level.slide_pixels`` is the part to keep). Overview crops are clipped to the
parent canvas, and neighbours outside the window grid do not exist.

Phases: window (row, col) is in phase A (even, even), B (even, odd), C (odd, even) or D (odd, odd); a window sees,
as clean context, the border strips of those of its eight neighbours whose phase is earlier (A: none; B: left and
right; C: above, below and the four diagonals; D: all eight), plus the parent level's overview of the window and a
margin. Every phase is one parallel batch.

Positions (t, h, w) of the sequence (report of padded length Lp at (k+1, 0, 0), as Z-Image):
target token (i, j) at (Lp+1, i, j); a neighbour strip token at (Lp+1, its true offset from the target origin);
an overview token of the level d up at (Lp+1+d, (i+½)s^d − ½ − origin), in target-token units, fractional.

Typical use by the generation pipeline::

    plan = plan_slide(15_000, 20_000, 0.5, seed=7)                       # 8 -> 2 -> 0.5 µm/px
    for level in plan.generation_order():
        todo = plan.windows(level) if level == plan.coarsest else tissue_windows(plan, level, mask, mask_mpp)
        for phase in range(4):
            for batch in phase_batches([w for w in todo if w.phase == phase], 8, rank=rank, world_size=world):
                samples = [build_sample(plan, w, store.read, report, window_noise(plan, w)) for w in batch]
                ...  # sample(sequence_denoiser(model, samples), [s.target.latents for s in samples])
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from zwsi.model.sequence import SequenceSample

PHASES = ("A", "B", "C", "D")
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

ReadLatents = Callable[[int, tuple[int, int], tuple[int, int]], Any]
"""``read(level, (row0, row1), (col0, col1)) -> (C, h, w)`` latents of a level's canvas (``WindowStore.read``)."""


# ---- configuration and geometry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlanConfig:
    """Window geometry shared by every level.

    Attributes:
        window_tokens: side of a target window in tokens (64 = 128 latents = 1024 px).
        context_tokens: width of a neighbour's border strip in tokens.
        overview_margin: parent tokens added around the window's footprint in the overview crop.
        factor: mpp ratio between adjacent levels (an integer, so parent tokens cover whole child tokens).
        patch_size: latents per token side (Z-Image: 2).
        vae_factor: pixels per latent side (FLUX VAE: 8).
        latent_channels: channels of the latents (16).
        overlap_tokens: tokens the target extends beyond the window on each side (inside the canvas): the part
            over already generated neighbours (and known background) is re-imposed at every sampling step and
            cross-faded when the level is finished (`zwsi.generate.overlap`); 0 = windows written whole.
    """

    window_tokens: int = 64
    context_tokens: int = 8
    overview_margin: int = 4
    factor: int = 4
    patch_size: int = 2
    vae_factor: int = 8
    latent_channels: int = 16
    overlap_tokens: int = 0

    def __post_init__(self) -> None:
        for name in ("window_tokens", "factor", "patch_size", "vae_factor", "latent_channels"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.factor < 2:
            raise ValueError(f"factor must be >= 2 (an integer mpp ratio between levels), got {self.factor}")
        if not 0 <= self.context_tokens <= self.window_tokens:
            raise ValueError(
                f"context_tokens must be in [0, window_tokens={self.window_tokens}], got {self.context_tokens}"
            )
        if self.overview_margin < 0:
            raise ValueError(f"overview_margin must be >= 0, got {self.overview_margin}")
        # same-phase windows are two windows apart: their overlaps and strips then never touch (order-free phases)
        if not 0 <= self.overlap_tokens <= self.window_tokens // 2 or self.overlap_tokens + self.context_tokens > self.window_tokens:
            raise ValueError(f"overlap_tokens must be in [0, window_tokens/2 = {self.window_tokens // 2}] with "
                             f"overlap_tokens + context_tokens <= window_tokens = {self.window_tokens}, got "
                             f"overlap_tokens={self.overlap_tokens}, context_tokens={self.context_tokens}")

    @property
    def token_px(self) -> int:
        """Pixels per token side."""
        return self.patch_size * self.vae_factor

    @property
    def window_latents(self) -> int:
        """Latents per window side."""
        return self.window_tokens * self.patch_size


@dataclass(frozen=True)
class Level:
    """One level of the ladder.

    Attributes:
        index: 0 = finest; the parent of level k is level k + 1.
        mpp: µm per pixel.
        grid: (rows, cols) of windows.
        slide_pixels: (height, width) of the slide itself at this mpp; the canvas beyond is padding.
    """

    index: int
    mpp: float
    grid: tuple[int, int]
    slide_pixels: tuple[int, int]
    window_tokens: int
    patch_size: int

    @property
    def tokens(self) -> tuple[int, int]:
        """Canvas size in tokens (whole windows)."""
        return self.grid[0] * self.window_tokens, self.grid[1] * self.window_tokens

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Canvas size in latents (the store level's shape)."""
        return self.tokens[0] * self.patch_size, self.tokens[1] * self.patch_size


@dataclass(frozen=True)
class Window:
    """One target window: level, grid position, phase and noise seed."""

    level: int
    row: int
    col: int
    seed: int

    @property
    def phase(self) -> int:
        """0..3 for phases A..D."""
        return phase_of(self.row, self.col)

    def latent_box(self, config: PlanConfig) -> tuple[tuple[int, int], tuple[int, int]]:
        """((row0, row1), (col0, col1)) of the window in its level's latent canvas."""
        n = config.window_latents
        return (self.row * n, (self.row + 1) * n), (self.col * n, (self.col + 1) * n)


def phase_of(row: int, col: int) -> int:
    """Phase index of a window: 0 = A (even, even), 1 = B (even, odd), 2 = C (odd, even), 3 = D (odd, odd)."""
    return 2 * (row % 2) + (col % 2)


def window_seed(slide_seed: int, level: int, row: int, col: int) -> int:
    """A stable 63-bit noise seed from (slide seed, level, row, col): BLAKE2b, the same on every machine."""
    digest = hashlib.blake2b(struct.pack("<4q", slide_seed, level, row, col), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def magnification_ladder(final_mpp: float, *, coarsest_mpp: float = 8.0, factor: int = 4) -> list[float]:
    """µm/px of every level, finest first: ``final_mpp * factor**k`` while not coarser than ``coarsest_mpp``.

    ``magnification_ladder(0.5) == [0.5, 2.0, 8.0]``; ``magnification_ladder(0.25) == [0.25, 1.0, 4.0]``.
    """
    if final_mpp <= 0 or coarsest_mpp < final_mpp:
        raise ValueError(f"need 0 < final_mpp <= coarsest_mpp, got final_mpp={final_mpp}, coarsest_mpp={coarsest_mpp}")
    if factor < 2:
        raise ValueError(f"factor must be >= 2, got {factor}")
    ladder = [float(final_mpp)]
    while ladder[-1] * factor <= coarsest_mpp * (1 + 1e-9):
        ladder.append(ladder[-1] * factor)
    return ladder


@dataclass(frozen=True)
class SlidePlan:
    """The whole generation plan of one slide: its levels (finest first), window geometry and seed."""

    height_um: float
    width_um: float
    levels: tuple[Level, ...]
    seed: int
    config: PlanConfig = field(default_factory=PlanConfig)

    @property
    def coarsest(self) -> int:
        """Index of the coarsest level (generated first, without an overview)."""
        return len(self.levels) - 1

    def generation_order(self) -> list[int]:
        """Level indices in the order they are generated: coarsest first."""
        return list(range(self.coarsest, -1, -1))

    def level(self, index: int) -> Level:
        if not 0 <= index < len(self.levels):
            raise ValueError(f"level {index} does not exist; the plan has levels 0..{self.coarsest}")
        return self.levels[index]

    def window(self, level: int, row: int, col: int) -> Window:
        rows, cols = self.level(level).grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"window ({row}, {col}) is outside level {level}'s {rows}x{cols} grid")
        return Window(level, row, col, window_seed(self.seed, level, row, col))

    def windows(self, level: int, phase: int | None = None) -> list[Window]:
        """Windows of a level in raster order, optionally only one phase (0..3)."""
        rows, cols = self.level(level).grid
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        return [self.window(level, r, c) for r, c in cells if phase is None or phase_of(r, c) == phase]


def plan_slide(
    height_um: float,
    width_um: float,
    final_mpp: float,
    *,
    seed: int,
    coarsest_mpp: float = 8.0,
    config: PlanConfig | None = None,
) -> SlidePlan:
    """Plan a slide of ``height_um × width_um`` µm at ``final_mpp`` µm/px (see the module docstring).

    Args:
        height_um: slide height in µm.
        width_um: slide width in µm.
        final_mpp: µm/px of the finest level (level 0).
        seed: the slide seed (per-window seeds derive from it).
        coarsest_mpp: the ladder stops before getting coarser than this.
        config: window geometry.
    """
    config = config or PlanConfig()
    if height_um <= 0 or width_um <= 0:
        raise ValueError(f"slide size must be positive, got {height_um} x {width_um} µm")
    levels = []
    for index, mpp in enumerate(magnification_ladder(final_mpp, coarsest_mpp=coarsest_mpp, factor=config.factor)):
        px = (math.ceil(height_um / mpp - 1e-9), math.ceil(width_um / mpp - 1e-9))
        side = config.window_tokens * config.token_px
        grid = (math.ceil(px[0] / side), math.ceil(px[1] / side))
        levels.append(Level(index, mpp, grid, px, config.window_tokens, config.patch_size))
    return SlidePlan(float(height_um), float(width_um), tuple(levels), int(seed), config)


# ---- which windows, in which order ------------------------------------------------------------------------------
def phase_offsets(phase: int) -> list[tuple[int, int]]:
    """(drow, dcol) of the neighbours a window of ``phase`` sees: those whose phase is earlier.

    A: none; B: (0, ±1); C: (±1, 0) and the four diagonals; D: all eight (DESIGN §3).
    """
    if phase not in range(len(PHASES)):
        raise ValueError(f"phase must be 0..3 (A..D), got {phase}")
    r, c = divmod(phase, 2)  # a window of this phase sits at row parity r, column parity c
    return [(dr, dc) for dr, dc in NEIGHBOUR_OFFSETS if phase_of(r + dr, c + dc) < phase]


Known = Callable[[int, int], bool]
"""``known(row, col)``: whether a window of the level is known before any phase (background, filled with glass)."""


def neighbours(
    plan: SlidePlan, window: Window, *, phase: int | None = None, background: Known | None = None
) -> list[tuple[int, int]]:
    """Offsets of the neighbours a window sees, inside the grid, in raster order: those of an earlier phase
    (:func:`phase_offsets`) and, whatever their phase, those known to be ``background`` (blank glass is filled
    before any phase, so tissue can be generated to end where the glass begins).

    ``phase`` overrides the window's own phase (training draws the four context patterns for any window).
    """
    rows, cols = plan.level(window.level).grid
    earlier = set(phase_offsets(window.phase if phase is None else phase))
    out = []
    for dr, dc in NEIGHBOUR_OFFSETS:
        r, c = window.row + dr, window.col + dc
        if 0 <= r < rows and 0 <= c < cols and ((dr, dc) in earlier or (background is not None and background(r, c))):
            out.append((dr, dc))
    return out


def tissue_windows(
    plan: SlidePlan, level: int, mask: np.ndarray, mask_mpp: float, *, min_fraction: float = 0.0
) -> list[Window]:
    """Windows of ``level`` whose footprint holds tissue in a mask of the parent level (or any mask).

    Args:
        plan: the slide plan.
        level: the level whose windows are selected (not the coarsest: it has no parent).
        mask: (rows, cols) bool tissue mask anchored at the slide's top-left corner, e.g. ``TissueMask.mask``
            detected on the generated parent level.
        mask_mpp: µm per mask pixel.
        min_fraction: a window is kept when its tissue fraction is above this (0: any tissue pixel).

    Returns:
        The tissue windows in raster order; the others are background, filled without a model call.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise ValueError(f"mask must be a 2-D bool array, got {mask.dtype} of shape {mask.shape}")
    if mask_mpp <= 0:
        raise ValueError(f"mask_mpp must be > 0, got {mask_mpp}")
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = mask.cumsum(0).cumsum(1)
    info = plan.level(level)
    window_um = plan.config.window_tokens * plan.config.token_px * info.mpp
    kept = []
    for w in plan.windows(level):
        r0, c0 = (math.floor(v * window_um / mask_mpp) for v in (w.row, w.col))
        r1, c1 = (math.ceil((v + 1) * window_um / mask_mpp) for v in (w.row, w.col))
        area = (r1 - r0) * (c1 - c0)
        r0, r1 = min(r0, mask.shape[0]), min(r1, mask.shape[0])
        c0, c1 = min(c0, mask.shape[1]), min(c1, mask.shape[1])
        inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        if inside > 0 and inside / area > min_fraction:
            kept.append(w)
    return kept


def phase_batches(
    windows: Iterable[Window], batch_size: int, *, rank: int = 0, world_size: int = 1
) -> list[list[Window]]:
    """Split a phase's windows for one process: rank r takes windows r::world_size, in batches of ``batch_size``.

    The union over ranks is the whole phase and every window keeps its own seed, so the slide does not depend on
    the batch size or the number of processes.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    mine = list(windows)[rank::world_size]
    return [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]


# ---- what a window sees -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContextSpec:
    """One clean context segment: where to read it and where its tokens sit.

    Attributes:
        kind: "neighbour" or "overview".
        level: level the latents are read from.
        rows: (row0, row1) latent rows of that level's canvas.
        cols: (col0, col1) latent cols.
        depth: levels up from the target (0 for neighbours); the position's t is Lp + 1 + depth.
        h0: position h of the first token row, in target-token units from the target origin.
        w0: position w of the first token column.
        step: position step per token (1 for neighbours, s**depth for an overview).
        offset: (drow, dcol) of the neighbour window, (0, 0) for an overview.
    """

    kind: str
    level: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    depth: int
    h0: float
    w0: float
    step: float
    offset: tuple[int, int] = (0, 0)

    def token_shape(self, patch_size: int) -> tuple[int, int]:
        return (self.rows[1] - self.rows[0]) // patch_size, (self.cols[1] - self.cols[0]) // patch_size


def _strip(n: int, k: int, d: int) -> tuple[int, int]:
    """Token range, relative to the target origin, of the neighbour at offset d along one axis (strip width k)."""
    return {-1: (-k, 0), 0: (0, n), 1: (n, n + k)}[d]


def context_specs(
    plan: SlidePlan, window: Window, *, phase: int | None = None, background: Known | None = None
) -> list[ContextSpec]:
    """The clean contexts of a window: neighbour strips (earlier phases and known background, raster order), then
    the parent overview.

    ``phase`` and ``background`` as in :func:`neighbours`.
    """
    cfg, p = plan.config, plan.config.patch_size
    n, k = cfg.window_tokens, cfg.context_tokens
    oy, ox = window.row * n, window.col * n  # target origin in level tokens
    specs = []
    if k > 0:
        for dr, dc in neighbours(plan, window, phase=phase, background=background):
            (h0, h1), (w0, w1) = _strip(n, k, dr), _strip(n, k, dc)
            rows, cols = ((oy + h0) * p, (oy + h1) * p), ((ox + w0) * p, (ox + w1) * p)
            specs.append(ContextSpec("neighbour", window.level, rows, cols, 0, float(h0), float(w0), 1.0, (dr, dc)))
    if window.level < plan.coarsest:
        parent, s, m = plan.level(window.level + 1), cfg.factor, cfg.overview_margin
        th, tw = parent.tokens
        i0, i1 = max(oy // s - m, 0), min(-(-(oy + n) // s) + m, th)
        j0, j1 = max(ox // s - m, 0), min(-(-(ox + n) // s) + m, tw)
        specs.append(
            ContextSpec(
                "overview", parent.index, (i0 * p, i1 * p), (j0 * p, j1 * p), 1,
                (i0 + 0.5) * s - 0.5 - oy, (j0 + 0.5) * s - 0.5 - ox, float(s),
            )
        )
    return specs


def target_box(plan: SlidePlan, window: Window) -> tuple[tuple[int, int], tuple[int, int]]:
    """((row0, row1), (col0, col1)) latents of the window's target: the window extended by ``overlap_tokens`` on
    each side, clipped to its level's canvas (the window itself when the overlap is 0)."""
    cfg = plan.config
    (r0, r1), (c0, c1) = window.latent_box(cfg)
    o = cfg.overlap_tokens * cfg.patch_size
    rows, cols = plan.level(window.level).latent_shape
    return (max(r0 - o, 0), min(r1 + o, rows)), (max(c0 - o, 0), min(c1 + o, cols))


def window_noise(plan: SlidePlan, window: Window) -> Tensor:
    """The window's starting noise ``(C, 1, h, w)`` float32 over its `target_box`, from its own seed (CPU
    generator): the same whatever the batch, device or number of processes."""
    from zwsi.sampling import seeded_noise

    (r0, r1), (c0, c1) = target_box(plan, window)
    return seeded_noise([window.seed], (plan.config.latent_channels, 1, r1 - r0, c1 - c0))[0]


def build_sample(
    plan: SlidePlan,
    window: Window,
    read: ReadLatents,
    report: Tensor,
    target: Tensor,
    *,
    t: float = 0.0,
    specs: Sequence[ContextSpec] | None = None,
) -> SequenceSample:
    """The ``SequenceSample`` of one window: target, neighbour strips and overview with registered positions.

    Args:
        plan: the slide plan.
        window: the target window.
        read: reads clean latents of a level (``WindowStore.read``); returns ``(C, h, w)`` array or tensor.
        report: ``(L, cap_feat_dim)`` report features (L = 0 for the empty report of CFG).
        target: ``(C, 1, h, w)`` noisy latents of the window's `target_box` (e.g. :func:`window_noise`).
        t: the model time of the target (0 = noise); the sampler overwrites it per step.
        specs: the contexts to use (default :func:`context_specs`; pass a subset to drop some, e.g. in training).
    """
    import torch

    from zwsi.model.sequence import ImageSegment, SequenceSample, grid_positions, report_token_count

    cfg, p = plan.config, plan.config.patch_size
    (r0, r1), (c0, c1) = target_box(plan, window)
    (wr0, _), (wc0, _) = window.latent_box(cfg)
    if tuple(target.shape) != (cfg.latent_channels, 1, r1 - r0, c1 - c0):
        raise ValueError(f"target latents must be ({cfg.latent_channels}, 1, {r1 - r0}, {c1 - c0}) (the window's "
                         f"target box), got {tuple(target.shape)}")
    t_axis = report_token_count(report.shape[0]) + 1
    contexts = []
    for spec in context_specs(plan, window) if specs is None else specs:
        raw = read(spec.level, spec.rows, spec.cols)  # copied: the sample must not alias the store's buffers
        latents = raw.detach().clone() if isinstance(raw, torch.Tensor) else torch.from_numpy(np.array(raw))
        n_h, n_w = spec.token_shape(p)
        if tuple(latents.shape) != (cfg.latent_channels, n_h * p, n_w * p):
            raise ValueError(
                f"read({spec.level}, {spec.rows}, {spec.cols}) returned {tuple(latents.shape)}, "
                f"expected ({cfg.latent_channels}, {n_h * p}, {n_w * p})"
            )
        positions = grid_positions(t_axis + spec.depth, n_h, n_w, spec.h0, spec.w0, spec.step)  # (n_h*n_w, 3)
        contexts.append(ImageSegment(latents.to(target.device, target.dtype)[:, None], positions.to(target.device)))
    h0, w0 = (r0 - wr0) // p, (c0 - wc0) // p  # the overlap sits at negative positions above / left
    target_positions = grid_positions(t_axis, (r1 - r0) // p, (c1 - c0) // p, h0, w0).to(target.device)  # (N_t, 3)
    return SequenceSample(target=ImageSegment(target, target_positions), t=t, report=report, contexts=contexts)
