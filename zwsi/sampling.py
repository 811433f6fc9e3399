"""Sampling: Z-Image's flow-matching Euler sampler with its shifted schedule and optional CFG.

Time convention as in :mod:`zwsi.flow`: sigma is the noise level, the model is called with ``t = 1 - sigma`` and
predicts ``x0 - eps``. The model is any callable ``model(x, t) -> prediction`` where ``x`` is a batch ``(B, ...)``
or a list of B per-sample tensors and ``t`` is ``(B,)`` float32; :func:`sequence_denoiser` adapts the packed
S3-DiT (``forward(list[SequenceSample])``) to it.

Turbo (8 steps, shift 3.0, no CFG)::

    noise = seeded_noise([seed], (16, 1, 128, 128))        # one 1024² window
    latents = sample(model, noise)                          # 8 model calls
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from zwsi.flow import Denoiser, Latents, euler_step, shift_sigmas

Imposer = Callable[[list[Tensor], float], list[Tensor]]
"""``impose(xs, sigma) -> xs``: the batch's latents with their known parts replaced at noise level ``sigma``."""

TURBO_STEPS = 8
TURBO_SHIFT = 3.0


def flow_sigmas(num_steps: int = TURBO_STEPS, shift: float = TURBO_SHIFT) -> Tensor:
    """Z-Image's inference noise levels: ``sigma_i = 1 - i/N`` shifted, then a final 0.

    Args:
        num_steps: N, the number of model calls.
        shift: the time shift (Z-Image: 3.0, no dynamic shifting).

    Returns:
        ``(N + 1,)`` float32 sigmas from 1.0 down to 0.0 (Turbo: 1, 0.954545, 0.9, 0.833333, 0.75, 0.642857,
        0.5, 0.3, 0).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigma = 1.0 - torch.arange(num_steps, dtype=torch.float64) / num_steps
    return torch.cat([shift_sigmas(sigma, shift), torch.zeros(1, dtype=torch.float64)]).float()


def seeded_noise(seeds: Sequence[int], shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """Standard normal noise ``(len(seeds), *shape)``, sample i drawn from its own CPU generator seeded ``seeds[i]``.

    Drawing on the CPU makes a sample's noise depend only on its seed: not on the batch it is in, the device or
    the number of processes.
    """
    draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(draws).to(device)


def _call(model: Denoiser, x: Latents, t: float, batch: int, device: torch.device) -> list[Tensor]:
    """Call the model at one time for the whole batch; fp32 predictions as a list."""
    out = model(x, torch.full((batch,), t, dtype=torch.float32, device=device))
    if len(out) != batch:
        raise ValueError(f"model returned {len(out)} predictions for a batch of {batch}")
    return [o.float() for o in out]


def guide(
    positive: Tensor, negative: Tensor, guidance_scale: float, normalization: float = 0.0
) -> Tensor:
    """Classifier-free guidance for one sample: ``pos + w * (pos - neg)``, optionally norm-capped.

    Args:
        positive: the conditional prediction.
        negative: the unconditional prediction (empty report).
        guidance_scale: w.
        normalization: Z-Image's ``cfg_normalization`` r; when r > 0 and ``||pred|| > r * ||pos||`` (whole-tensor
            norms) the guided prediction is rescaled to norm ``r * ||pos||``.
    """
    pred = positive + guidance_scale * (positive - negative)
    if normalization > 0:
        limit = torch.linalg.vector_norm(positive) * normalization
        norm = torch.linalg.vector_norm(pred)
        if norm > limit:
            pred = pred * (limit / norm)
    return pred


def sample(
    model: Denoiser,
    noise: Latents,
    *,
    num_steps: int = TURBO_STEPS,
    shift: float = TURBO_SHIFT,
    sigmas: Tensor | None = None,
    guidance_scale: float = 0.0,
    uncond_model: Denoiser | None = None,
    cfg_truncation: float = 1.0,
    cfg_normalization: float = 0.0,
    impose: Imposer | None = None,
    progress: bool = False,
) -> Latents:
    """Integrate the flow from noise (sigma = 1) to data (sigma = 0) with Euler steps, in float32.

    Args:
        model: ``model(x, t) -> prediction of x0 - eps`` (conditional on the report).
        noise: the start, ``(B, ...)`` or a list of B tensors (e.g. from :func:`seeded_noise`).
        num_steps: number of steps (model calls without CFG); ignored when ``sigmas`` is given.
        shift: schedule shift (Z-Image: 3.0).
        sigmas: an explicit decreasing schedule ``(N + 1,)`` ending at 0, instead of ``flow_sigmas``.
        guidance_scale: CFG scale w; CFG is on when w > 0 (``pred = pos + w * (pos - neg)``).
        uncond_model: the same model conditioned on the empty report; required when w > 0.
        cfg_truncation: CFG is switched off (w = 0, no unconditional call) on steps whose model time
            ``t = 1 - sigma`` exceeds this value; 1.0 keeps it on for every step (Z-Image's default).
        cfg_normalization: Z-Image's norm cap r (see :func:`guide`); 0 disables it.
        impose: ``impose(xs, sigma_next) -> xs`` after every step but the last: puts back what is known at the new
            noise level (RePaint-style; `zwsi.generate.overlap.KnownLatents`). The last step's output is returned
            as the model made it, so the caller can cross-fade it into what is known.
        progress: show a tqdm bar over the steps.

    Returns:
        The denoised latents (float32), with the structure of ``noise``.
    """
    if guidance_scale > 0 and uncond_model is None:
        raise ValueError(f"guidance_scale = {guidance_scale} > 0 needs uncond_model (the empty-report model)")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    sigmas = flow_sigmas(num_steps, shift) if sigmas is None else sigmas.float()
    if sigmas.dim() != 1 or len(sigmas) < 2 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError(f"sigmas must be a strictly decreasing 1-D schedule of length >= 2, got {sigmas.tolist()}")
    is_list = isinstance(noise, list)
    xs = [x.float() for x in noise] if isinstance(noise, list) else list(noise.float().unbind(0))
    batch = len(xs)
    device = xs[0].device
    steps = range(len(sigmas) - 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="denoising", unit="step")
    for i in steps:
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        # Z-Image computes the model time in float32 as (1000 - 1000 sigma) / 1000.
        t = float((1000.0 - sigmas[i] * 1000.0) / 1000.0)
        x_in = xs if is_list else torch.stack(xs)
        pred = _call(model, x_in, t, batch, device)
        w = guidance_scale if t <= cfg_truncation else 0.0
        if w > 0:
            assert uncond_model is not None  # checked above: guidance needs it
            neg = _call(uncond_model, x_in, t, batch, device)
            pred = [guide(p, n, w, cfg_normalization) for p, n in zip(pred, neg)]
        xs = [euler_step(x, p, sigma, sigma_next) for x, p in zip(xs, pred)]
        if impose is not None and sigma_next > 0:
            xs = impose(xs, sigma_next)
    return xs if is_list else torch.stack(xs)


def sequence_denoiser(model: Any, samples: Sequence[Any]) -> Denoiser:
    """Adapt the packed S3-DiT to the sampler: ``model.forward(list[SequenceSample]) -> list[Tensor]``.

    Each call puts the current noisy latents into each sample's target and sets its time; contexts, report and
    positions stay as built (e.g. by the slide planner). Use a second denoiser over samples with the empty report
    as ``uncond_model`` for CFG.

    Args:
        model: a callable taking ``list[SequenceSample]`` (``zwsi.model.s3dit.S3DiT``).
        samples: the window samples, one per batch element, in batch order.
    """

    def denoise(x: Latents, t: Tensor) -> list[Tensor]:
        if len(x) != len(samples):
            raise ValueError(f"got {len(x)} latents for {len(samples)} sequence samples")
        batch = []
        for s, xi, ti in zip(samples, x, t):
            if tuple(xi.shape) != tuple(s.target.latents.shape):
                raise ValueError(f"latents of shape {tuple(xi.shape)} for a target of {tuple(s.target.latents.shape)}")
            dtype = s.target.latents.dtype
            target = dataclasses.replace(s.target, latents=xi.to(dtype))
            batch.append(dataclasses.replace(s, target=target, t=ti))
        return model(batch)

    return denoise
