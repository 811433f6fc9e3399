"""Training windows that match generation (DESIGN §3): a target window with the context pattern of its phase.

Every draw is a pure function of (seed, sample index): the slide (weighted by subtype so rare subtypes are
seen), the level, the phase A-D, a tissue window of that phase, whether the report and the overview are dropped,
the noise level and the noise itself. Rank r of a W-process run takes its share of each global batch by index, so
a run's data does not depend on the number of processes, and a resumed run continues from the step alone.

Geometry comes from the planner: `zwsi.planner.context_specs` gives the neighbour strips of the window's phase
and the parent overview, `zwsi.planner.build_sample` their registered 3D positions — the same calls generation
makes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from zwsi.flow import sample_sigmas
from zwsi.model.sequence import ImageSegment, SequenceSample
from zwsi.planner import build_sample, context_specs, phase_of, target_box
from zwsi.train.config import DataConfig, ObjectiveConfig
from zwsi.train.dataset import PreparedDataset, SlideEntry


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (BLAKE2b): the same on every machine and process."""
    digest = hashlib.blake2b(struct.pack(f"<{len(values)}q", *values), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class Draw:
    """One training window: where it is, its context pattern, what is dropped, its noise level and noise seed."""

    index: int
    slide: str
    level: int
    row: int
    col: int
    phase: int
    drop_report: bool
    drop_overview: bool
    sigma: float
    noise_seed: int


@dataclass
class Example:
    """A built training window: the clean target latents, its noise, its sigma and the sequence around it.

    Attributes:
        x0: (C, 1, n, n) clean target latents.
        eps: (C, 1, n, n) the noise.
        sigma: the noise level.
        sample: the `SequenceSample` (target latents are replaced by the noisy ones at the forward).
        tokens: tokens of the sequence (target + contexts + report).
    """

    draw: Draw
    x0: Tensor
    eps: Tensor
    sigma: float
    sample: SequenceSample
    tokens: int
    target_tokens: int

    def to(self, device: torch.device | str) -> Example:
        """The same example with every tensor on `device`."""
        s = self.sample
        target = ImageSegment(s.target.latents.to(device), s.target.positions.to(device))
        contexts = [ImageSegment(c.latents.to(device), c.positions.to(device)) for c in s.contexts]
        sample = dataclasses.replace(s, target=target, report=s.report.to(device), contexts=contexts)
        return dataclasses.replace(self, x0=self.x0.to(device), eps=self.eps.to(device), sample=sample)


class WindowSampler:
    """Deterministic training windows of one split of a prepared dataset.

    Args:
        dataset: the prepared dataset.
        split: the split to draw from.
        data: sampling settings (phase/level weights, drop rates, subtype balance).
        objective: how noise levels are drawn.
        seed: the run seed.
    """

    def __init__(self, dataset: PreparedDataset, split: str, data: DataConfig, objective: ObjectiveConfig, seed: int) -> None:
        self.dataset = dataset
        self.data = data
        self.objective = objective
        self.seed = int(seed)
        self.slides = dataset.slides(split)
        if not self.slides:
            raise ValueError(f"the dataset {dataset.folder} has no prepared slides in split {split!r}")
        counts = Counter(s.subtype for s in self.slides)
        weights = np.array([counts[s.subtype] ** -data.subtype_balance for s in self.slides], dtype=np.float64)
        self.slide_p = weights / weights.sum()
        self.n_levels = len(dataset.plan(self.slides[0]).levels)
        if data.level_weights is not None and len(data.level_weights) != self.n_levels:
            raise ValueError(f"data.level_weights has {len(data.level_weights)} entries; the ladder has {self.n_levels} levels")
        self._by_slide = {s.slide_id: s for s in self.slides}

    def subtype_frequencies(self) -> dict[str, float]:
        """Probability of each subtype per draw (after balancing)."""
        out: dict[str, float] = {}
        for s, p in zip(self.slides, self.slide_p):
            out[s.subtype] = out.get(s.subtype, 0.0) + float(p)
        return out

    def draw(self, index: int, *, sigma: float | None = None, drops: bool = True) -> Draw:
        """The draw of sample `index` (a pure function of the seed and the index).

        Args:
            index: global sample index.
            sigma: a fixed noise level instead of a drawn one (validation).
            drops: False never drops the report or the overview (validation).
        """
        rng = np.random.default_rng(mix_seed(self.seed, index, 1))
        entry = self.slides[int(rng.choice(len(self.slides), p=self.slide_p))]
        by_level = [[(r, c) for r, c in entry.tissue[lv]] for lv in range(self.n_levels)]
        # the coarsest level decides the slide's layout and generation samples all of it: tissue, edge and glass
        # windows there, in their real proportions (finer levels generate, so train, tissue windows only)
        top = self.dataset.plan(entry).level(self.n_levels - 1).grid
        by_level[-1] = [(r, c) for r in range(top[0]) for c in range(top[1])]
        levels = [lv for lv in range(self.n_levels)
                  if by_level[lv] and (entry.train_levels is None or lv in entry.train_levels)]
        lw = np.array([1.0 if self.data.level_weights is None else self.data.level_weights[lv] for lv in levels])
        if lw.sum() <= 0:
            lw = np.ones(len(levels))
        level = levels[int(rng.choice(len(levels), p=lw / lw.sum()))]
        by_phase: dict[int, list[tuple[int, int]]] = {}
        for r, c in by_level[level]:
            by_phase.setdefault(phase_of(r, c), []).append((r, c))
        phases = sorted(by_phase)
        pw = np.array([self.data.phase_weights[p] for p in phases], dtype=np.float64)
        if pw.sum() <= 0:
            pw = np.ones(len(phases))
        phase = phases[int(rng.choice(len(phases), p=pw / pw.sum()))]
        row, col = by_phase[phase][int(rng.integers(len(by_phase[phase])))]
        u_report, u_overview = rng.random(2)
        noise_seed = mix_seed(self.seed, index, 2)
        if sigma is None:
            gen = torch.Generator().manual_seed(noise_seed)
            o = self.objective
            sigma = float(sample_sigmas(1, method=o.timesteps, shift=o.shift, loc=o.loc, scale=o.scale, generator=gen)[0])
        return Draw(
            index, entry.slide_id, level, int(row), int(col), phase,
            bool(drops and u_report < self.data.report_drop), bool(drops and u_overview < self.data.overview_drop),
            float(sigma), noise_seed,
        )

    def build(self, draw: Draw, device: torch.device | str = "cpu") -> Example:
        """The training window of a draw, with the planner's contexts and positions."""
        entry: SlideEntry = self._by_slide[draw.slide]
        plan = self.dataset.plan(entry)
        window = plan.window(draw.level, draw.row, draw.col)
        tissue = {(r, c) for r, c in entry.tissue[draw.level]}
        background = None
        if draw.level < self.n_levels - 1:  # below the coarsest level, glass windows are filled before any phase

            def background(r: int, c: int) -> bool:
                return (r, c) not in tissue

        specs = context_specs(plan, window, phase=draw.phase, background=background)
        if draw.drop_overview:
            specs = [s for s in specs if s.kind != "overview"]
        report = self.dataset.report_features(entry)
        if draw.drop_report:
            report = report[:0]
        rows, cols = target_box(plan, window)  # the window and its overlap, as generation samples it
        x0 = torch.from_numpy(self.dataset.read_latents(entry, draw.level, rows, cols))[:, None].to(device)  # (C, 1, h, w)
        gen = torch.Generator().manual_seed(draw.noise_seed)
        eps = torch.randn(x0.shape, generator=gen).to(device)  # (C, 1, h, w)

        def read(level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
            return self.dataset.read_latents(entry, level, rows, cols)

        sample = build_sample(plan, window, read, report.to(device), x0, t=1.0 - draw.sigma, specs=specs)
        p = plan.config.patch_size
        target_tokens = (x0.shape[-2] // p) * (x0.shape[-1] // p)
        tokens = target_tokens + sum(c.positions.shape[0] for c in sample.contexts) + report.shape[0]
        return Example(draw, x0, eps, draw.sigma, sample, tokens, target_tokens)


def local_indices(step: int, micro: int, *, batch_size: int, grad_accum: int, rank: int, world_size: int) -> list[int]:
    """Global sample indices of one process's micro-batch: step s holds indices [s*G, (s+1)*G), G the global batch.

    Micro-step m of rank r takes the contiguous block ``(m*W + r)*b ... + b``, so the union over ranks and
    micro-steps is the whole global batch whatever the number of processes.
    """
    global_batch = batch_size * grad_accum * world_size
    start = step * global_batch + (micro * world_size + rank) * batch_size
    return list(range(start, start + batch_size))
