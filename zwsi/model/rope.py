"""3D rotary position embedding (RoPE) computed from float (t, h, w) positions.

Axis meaning (DESIGN §3): for report tokens the first axis is the text position (token k at (k+1, 0, 0), as in
Z-Image); for image tokens it is Lp + 1 + zoom depth (0 for the target level, d for d levels up), and (h, w) are one
registered spatial frame in target-token units: the target's token (i, j) is at (i, j), neighbours sit at their true
offsets (negative above/left), parent tokens at fractional centres. Positions may therefore be fractional or
negative, so angles are computed from the positions instead of being looked up in a table of integer positions
(Z-Image's `axes_lens` tables). For integer positions the rotation is exactly Z-Image's:

* per axis a with d_a dims, frequencies theta^(-2k/d_a), k = 0..d_a/2-1, in float64;
* angle = position * frequency formed in float64, then rounded to float32;
* interleaved (GPT-J style) complex rotation of the pairs (x_2m, x_2m+1), pairs ordered [t | h | w];
* applied to q and k after the QK RMSNorm, in float32, the result cast back to the activation dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_frequencies(axes_dims: tuple[int, ...], theta: float, device: torch.device | None = None) -> list[Tensor]:
    """Per-axis float64 frequencies theta^(-2k/d), k = 0..d/2-1 (Z-Image's formula, bit for bit)."""
    return [
        1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)) for d in axes_dims
    ]


def rope_angles(positions: Tensor, axes_dims: tuple[int, ...], theta: float) -> Tensor:
    """Rotation angles for each token.

    Args:
        positions: (N, 3) float or integer (t, h, w) positions; fractional and negative values are allowed.
        axes_dims: RoPE dims per axis (they sum to head_dim).
        theta: RoPE base.

    Returns:
        (N, head_dim/2) float32 angles, pairs ordered [t | h | w].
    """
    if positions.ndim != 2 or positions.shape[1] != len(axes_dims):
        raise ValueError(f"positions must have shape (N, {len(axes_dims)}), got {tuple(positions.shape)}")
    pos = positions.to(torch.float64)  # (N, 3)
    freqs = rope_frequencies(axes_dims, theta, device=positions.device)
    # product in float64, rounded to float32, as Z-Image's precomputed tables
    return torch.cat([(pos[:, a, None] * f[None, :]).float() for a, f in enumerate(freqs)], dim=-1)  # (N, Dh/2)


def rope_factors(positions: Tensor, axes_dims: tuple[int, ...], theta: float) -> Tensor:
    """Rotation factors (cos, sin) per token and pair: (N, head_dim/2, 2) float32.

    They are the real and imaginary parts of `torch.polar(1, angle)`, exactly as Z-Image forms its complex tables,
    so integer positions give its factors bit for bit.
    """
    angles = rope_angles(positions, axes_dims, theta)  # (N, Dh/2)
    return torch.view_as_real(torch.polar(torch.ones_like(angles), angles))  # (N, Dh/2, 2)


def apply_rope(x: Tensor, factors: Tensor) -> Tensor:
    """Rotate the interleaved pairs (x_2m, x_2m+1), read as complex numbers, by the per-token factors.

    Eager: one complex multiply, as Z-Image. Under torch.compile the same product is written in real arithmetic,
    because inductor does not generate code for complex operators.

    Args:
        x: (N, H, Dh) queries or keys (any float dtype).
        factors: (N, Dh/2, 2) float32 (cos, sin) from `rope_factors`.

    Returns:
        (N, H, Dh) in x's dtype; the rotation itself is done in float32.
    """
    pairs = x.float().unflatten(-1, (-1, 2))  # (N, H, Dh/2, 2)
    if torch.compiler.is_compiling():
        cos, sin = factors[:, None, :, 0], factors[:, None, :, 1]  # (N, 1, Dh/2)
        re, im = pairs[..., 0], pairs[..., 1]  # (N, H, Dh/2)
        out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)  # (N, H, Dh/2, 2)
    else:
        rot = torch.view_as_complex(pairs) * torch.view_as_complex(factors)[:, None, :]  # (N, H, Dh/2) complex64
        out = torch.view_as_real(rot)  # (N, H, Dh/2, 2)
    return out.flatten(-2).type_as(x)  # (N, H, Dh)
