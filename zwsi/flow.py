"""Flow matching: the time convention, noising, the training objective and training-time sigma sampling.

The one time convention of Z-WSI (Z-Image's, written here once):

* ``sigma`` in [0, 1] is the noise level: ``x_sigma = (1 - sigma) * x0 + sigma * eps``
  (sigma = 0 is data, sigma = 1 is pure noise);
* the model receives ``t = 1 - sigma`` (0 = noise, 1 = clean; the model multiplies by 1000 inside);
* the model predicts the velocity ``x0 - eps`` (data minus noise);
* an Euler step from ``sigma`` to ``sigma_next`` is ``x <- x + (sigma_next - sigma) * (-prediction)``.

Every function here accepts a batched tensor ``(B, ...)`` or a list of per-sample tensors of any shapes (the packed
sequence model takes lists); per-sample scalars (``sigma``, ``t``, weights) are ``(B,)`` tensors.

Training, minRF-sized::

    sigma = sample_sigmas(x0.shape[0], method="logit-normal", shift=3.0, generator=g)
    loss = flow_loss(lambda x, t: model(x, t), x0, sigma, generator=g)
    loss.backward()
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import Tensor

Latents = Union[Tensor, list[Tensor]]
"""A batch of latents: one tensor ``(B, ...)`` or a list of B tensors (shapes may differ)."""

Denoiser = Callable[[Latents, Tensor], Latents]
"""``model(x_sigma, t) -> prediction of x0 - eps``, with ``t = 1 - sigma`` of shape ``(B,)``."""

SIGMA_METHODS = ("uniform", "logit-normal")
PREDICTIONS = ("velocity", "sample")
"""What a model outputs: ``"velocity"`` = ``x0 - eps`` (Z-Image), or ``"sample"`` = ``x0`` itself (see `as_velocity`)."""
MIN_SIGMA = 0.05
"""Smallest sigma a ``"sample"`` prediction is divided by when it is turned into a velocity (JiT's clip)."""


def model_time(sigma: Tensor) -> Tensor:
    """The model's time for noise level ``sigma``: ``t = 1 - sigma`` (0 = noise, 1 = clean)."""
    return 1.0 - sigma


def _per_sample(value: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample scalar so that it broadcasts over one sample (or a batch) of ``like``."""
    return value.reshape(value.shape + (1,) * (like.dim() - value.dim())).to(like.dtype)


def _batch_size(x: Latents) -> int:
    return len(x) if isinstance(x, list) else x.shape[0]


def _check_per_sample(name: str, value: Tensor, batch: int) -> None:
    if value.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) (one value per sample), got {tuple(value.shape)}")


def add_noise(x0: Latents, eps: Latents, sigma: Tensor) -> Latents:
    """Noise clean latents to level ``sigma``: ``x_sigma = (1 - sigma) * x0 + sigma * eps``.

    Args:
        x0: clean latents, ``(B, ...)`` or a list of B tensors.
        eps: standard normal noise of the same structure and shapes.
        sigma: ``(B,)`` noise levels in [0, 1].

    Returns:
        The noisy latents, with the structure of ``x0``.
    """
    _check_per_sample("sigma", sigma, _batch_size(x0))
    if isinstance(x0, list):
        return [(1 - s) * a + s * e for a, e, s in zip(x0, eps, sigma.tolist())]
    assert not isinstance(eps, list), "eps must have the structure of x0"
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * eps


def velocity(x0: Latents, eps: Latents) -> Latents:
    """The flow-matching target the model predicts: ``x0 - eps``."""
    if isinstance(x0, list):
        return [a - e for a, e in zip(x0, eps)]
    assert not isinstance(eps, list), "eps must have the structure of x0"
    return x0 - eps


def as_velocity(model: Denoiser, prediction: str = "velocity", *, min_sigma: float = MIN_SIGMA) -> Denoiser:
    """The model as a velocity denoiser, whatever it predicts; training and sampling both go through it.

    ``"velocity"``: the model already predicts ``x0 - eps`` (Z-Image); it is returned unchanged.
    ``"sample"``: the model predicts the clean latents ``x0``, and its velocity is
    ``(x0_hat - x_sigma) / max(sigma, min_sigma)``. This is JiT's x-prediction (Li & He, "Back to Basics: Let
    Denoising Generative Models Denoise", 2025): clean latents lie near a low-dimensional manifold, so a network
    whose width is below a patch's dimension (the built-in model: 128-wide tokens for 4 x 4 x 16 = 256 patch
    values) can still predict them, while it cannot carry full-dimensional noise through to predict ``x0 - eps``.
    Trained with the velocity loss (`flow_loss`) and sampled with Euler steps, which then land on ``x0_hat`` at
    sigma = 0.

    Raises:
        ValueError: an unknown prediction or a min_sigma outside (0, 1].
    """
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction = {prediction!r}, which has to be one of {list(PREDICTIONS)}")
    if not 0.0 < min_sigma <= 1.0:
        raise ValueError(f"min_sigma must be in (0, 1], got {min_sigma}")
    if prediction == "velocity":
        return model

    def velocity_of_sample(x: Latents, t: Tensor) -> Latents:
        x0_hat = model(x, t)
        sigma = (1.0 - t.float()).clamp(min=min_sigma)  # (B,)
        if isinstance(x, list):
            return [(p.float() - xi.float()) / s for p, xi, s in zip(x0_hat, x, sigma.tolist())]
        assert isinstance(x0_hat, Tensor)
        return (x0_hat.float() - x.float()) / _per_sample(sigma, x0_hat.float())

    return velocity_of_sample


def euler_step(x: Tensor, prediction: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """One Euler step from noise level ``sigma`` to ``sigma_next`` along the predicted velocity ``x0 - eps``.

    ``x <- x + (sigma_next - sigma) * (-prediction)``: with the exact velocity this lands exactly on
    ``x_{sigma_next}`` of the straight path (and on ``x0`` when ``sigma_next = 0``).
    """
    return x + (sigma_next - sigma) * (-prediction)


def shift_sigmas(sigma: Tensor, shift: float) -> Tensor:
    """Z-Image / SD3 time shift ``shift * sigma / (1 + (shift - 1) * sigma)``; shift > 1 moves time towards noise."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_sigmas(
    batch: int,
    *,
    method: str = "uniform",
    shift: float = 1.0,
    loc: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Training noise levels, one per sample.

    Args:
        batch: number of samples B.
        method: ``"uniform"`` (sigma ~ U[0, 1)) or ``"logit-normal"`` (sigma = sigmoid(N(loc, scale^2)), SD3).
        shift: Z-Image/SD3 time shift applied after sampling (1.0 = none; Z-Image-Turbo samples with 3.0).
        loc: mean of the logit-normal's normal.
        scale: standard deviation of the logit-normal's normal.
        generator: a seeded ``torch.Generator`` for reproducible draws (on the same device as ``device``).
        device: where the sigmas are made (the generator's device by default).

    Returns:
        ``(B,)`` float32 noise levels in [0, 1].
    """
    if method not in SIGMA_METHODS:
        raise ValueError(f"method = {method!r}, which has to be one of {list(SIGMA_METHODS)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if device is None and generator is not None:
        device = generator.device
    if method == "uniform":
        sigma = torch.rand(batch, generator=generator, device=device)
    else:
        sigma = torch.sigmoid(loc + scale * torch.randn(batch, generator=generator, device=device))
    return shift_sigmas(sigma, shift) if shift != 1.0 else sigma


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def flow_loss(
    model: Denoiser,
    x0: Latents,
    sigma: Tensor,
    *,
    eps: Latents | None = None,
    weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The flow-matching objective: mean squared error between the model's prediction and ``x0 - eps``.

    Each sample's error is averaged over its own elements (so samples of different sizes count equally), multiplied
    by its weight, and the batch mean is returned.

    Args:
        model: ``model(x_sigma, t) -> prediction``, called once with the noisy batch and ``t = 1 - sigma``.
        x0: clean latents, ``(B, ...)`` or a list of B tensors.
        sigma: ``(B,)`` noise levels (e.g. from :func:`sample_sigmas`).
        eps: the noise; drawn with ``generator`` when omitted.
        weights: optional ``(B,)`` per-sample loss weights (e.g. 0 to drop a sample).
        generator: seeds the noise when ``eps`` is omitted.

    Returns:
        The scalar loss (float32).
    """
    batch = _batch_size(x0)
    _check_per_sample("sigma", sigma, batch)
    if weights is not None:
        _check_per_sample("weights", weights, batch)
    if eps is None:
        eps = [_randn_like(a, generator) for a in x0] if isinstance(x0, list) else _randn_like(x0, generator)
    prediction = model(add_noise(x0, eps, sigma), model_time(sigma))
    target = velocity(x0, eps)
    if isinstance(x0, list):
        if not isinstance(prediction, list) or len(prediction) != batch:
            raise ValueError(f"model must return a list of {batch} predictions for a list batch")
        per_sample = torch.stack([((p.float() - y.float()) ** 2).mean() for p, y in zip(prediction, target)])
    else:
        if isinstance(prediction, list) or isinstance(target, list):
            raise ValueError("model must return one tensor for a tensor batch")
        if prediction.shape != target.shape:
            raise ValueError(f"model returned shape {tuple(prediction.shape)}, expected {tuple(target.shape)}")
        per_sample = ((prediction.float() - target.float()) ** 2).reshape(batch, -1).mean(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample)
    return per_sample.mean()
