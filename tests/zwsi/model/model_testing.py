"""Helpers shared by the model tests: tiny models with every parameter random (pad tokens and final layer too)."""

from __future__ import annotations

import torch
from torch import nn

from zwsi.model import ImageSegment, S3DiT, S3DiTConfig, SequenceSample, grid_positions, report_token_count


def randomise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter a random value, so zero-initialised parts (pad tokens, final layer) matter in a test.

    Norm weights are drawn around 1, matrices with ~1/sqrt(fan_in) scale, so activations stay O(1).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim >= 2:
                p.copy_(noise * 0.7 / p.shape[-1] ** 0.5)
            elif "norm" in name or name.startswith("cap_embedder.0"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.3 * noise)
    return model


def random_model(cfg: S3DiTConfig | None = None, seed: int = 0, **kwargs: object) -> S3DiT:
    """A randomised S3DiT in eval mode (fp32, CPU)."""
    return randomise_(S3DiT(cfg or S3DiTConfig.preset("tiny"), **kwargs), seed).eval()  # type: ignore[return-value]


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float32 (bf16 and fp16 tensors too)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def window_sample(seed: int, t: float, n_report: int, contexts: int = 2, **mask: bool) -> SequenceSample:
    """A target of 6x5 tokens (30: padded to 32), a left neighbour strip and a fractional overview at depth 1."""
    lp = report_token_count(n_report)
    target = ImageSegment(randn(16, 1, 12, 10, seed=seed), grid_positions(lp + 1, 6, 5))
    ctx = [
        ImageSegment(randn(16, 1, 12, 4, seed=seed + 1), grid_positions(lp + 1, 6, 2, w0=-2.0)),
        ImageSegment(randn(16, 1, 6, 6, seed=seed + 2), grid_positions(lp + 2, 3, 3, h0=-1.5, w0=-1.5, step=4.0)),
    ][:contexts]
    return SequenceSample(target, t, randn(n_report, 32, seed=seed + 3), ctx, **mask)
