"""The one place where generation builds and samples a batch of windows.

Each window starts from its own seeded noise over its target (`planner.window_noise`: the window and its overlap),
sees the report and its clean context (the neighbour strips of earlier phases and of known background, and the
parent overview, read from the latent store: `planner.build_sample`), and is denoised by `sampling.sample` over the
S3-DiT (`sampling.sequence_denoiser`, as a velocity whatever the model predicts: `flow.as_velocity`) on the flow
schedule. Where the target overlaps known windows, their latents are re-imposed at every step
(`zwsi.generate.overlap.KnownLatents`). With guidance, the unconditional branch is the same sequence with the report
dropped (as in training).

    latents = sample_windows(model, plan, batch, store.read, features, sigmas=flow_sigmas(8, 3.0))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zwsi.planner import build_sample, context_specs, phase_of, target_box, window_noise

if TYPE_CHECKING:
    from zwsi.planner import ReadLatents, SlidePlan, Window


def sample_windows(
    model: Any,
    plan: SlidePlan,
    batch: list[Window],
    read: ReadLatents,
    features: torch.Tensor,
    *,
    sigmas: torch.Tensor,
    guidance: float = 0.0,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    prediction: str = "velocity",
    background: Callable[[int, int], bool] | None = None,
) -> list[np.ndarray]:
    """Denoise a batch of windows from their seeded noise.

    Args:
        model: the S3-DiT (``forward(list[SequenceSample]) -> list[Tensor]``), on its device and dtype.
        plan: the slide plan.
        batch: windows of one level and phase.
        read: ``read(level, rows, cols)`` of the latent store (the context).
        features: the report's text features ``(L, D)`` on the model's device and dtype.
        sigmas: the noise levels of the schedule, from 1 to 0.
        guidance: CFG scale (0: off).
        cfg_truncation: CFG is off on steps whose model time exceeds this.
        cfg_normalization: Z-Image's CFG norm cap (0: off).
        prediction: what the model outputs (`zwsi.flow.PREDICTIONS`).
        background: ``background(row, col)`` for windows of the level filled as glass before any phase: known
            from the start, so context in every phase and re-imposed where a target overlaps them.

    Returns:
        Each window's latents over its `planner.target_box`, ``(C, h, w)`` float32.
    """
    from zwsi.flow import as_velocity
    from zwsi.sampling import sample, sequence_denoiser

    param = next(model.parameters())
    noise = [window_noise(plan, w).to(param.device) for w in batch]  # each (C, 1, h, w) float32
    specs = [context_specs(plan, w, background=background) for w in batch]
    samples = [build_sample(plan, w, read, features, z.to(param.dtype), specs=sp) for w, z, sp in zip(batch, noise, specs)]
    uncond = None
    if guidance > 0:
        empty = features[:0]  # (0, D): the dropped report (target at t-position 1), as in training
        dropped = [build_sample(plan, w, read, empty, z.to(param.dtype), specs=sp)
                   for w, z, sp in zip(batch, noise, specs)]
        uncond = as_velocity(sequence_denoiser(model, dropped), prediction)
    impose = _known(plan, batch, read, noise, background) if plan.config.overlap_tokens else None
    with torch.inference_mode():
        out = sample(as_velocity(sequence_denoiser(model, samples), prediction), noise, sigmas=sigmas,
                     guidance_scale=guidance, uncond_model=uncond, cfg_truncation=cfg_truncation,
                     cfg_normalization=cfg_normalization, impose=impose)
    return [z[:, 0].float().cpu().numpy() for z in out]


def _known(plan: SlidePlan, batch: list[Window], read: ReadLatents, noise: list[torch.Tensor],
           background: Callable[[int, int], bool] | None) -> Any:
    """`KnownLatents` of a batch: the latents of background and earlier-phase windows inside each target."""
    from zwsi.generate.overlap import KnownLatents, known_mask

    values, masks = [], []
    for w, z in zip(batch, noise):
        def known(r: int, c: int, w: Window = w) -> bool:
            return (background is not None and background(r, c)) or phase_of(r, c) < w.phase

        rows, cols = target_box(plan, w)
        values.append(torch.from_numpy(np.asarray(read(w.level, rows, cols), dtype=np.float32))[:, None].to(z.device))
        masks.append(torch.from_numpy(known_mask(plan, w, known))[None, None].to(z.device))
    return KnownLatents(values, masks, noise)
