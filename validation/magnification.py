"""Cross-magnification consistency: a level downsampled to the next coarser level should match that level.

Z-WSI generates each level of the pyramid with the model, so a coarse level is not by construction the average
of the finer one; this check measures how far they disagree (PSNR and SSIM, MONAI).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from validation.image_metrics import paired_ssim_psnr


def downsample_area(image: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    """Average `factor`×`factor` blocks of an (H, W, 3) uint8 image (crops any remainder), rounded to uint8."""
    if factor < 1:
        msg = f"factor={factor} must be a positive integer"
        raise ValueError(msg)
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].astype(np.float64).reshape(h // factor, factor, w // factor, factor, -1)
    return np.clip(np.round(blocks.mean(axis=(1, 3))), 0, 255).astype(np.uint8)


def consistency(fine: NDArray[np.uint8], coarse: NDArray[np.uint8], factor: int) -> dict[str, float]:
    """PSNR (dB) and SSIM between `fine` downsampled by `factor` and `coarse` (same region, coarser level).

    Args:
        fine: (H·factor, W·factor, 3) uint8 region of the finer level.
        coarse: (H, W, 3) uint8 region of the coarser level.
        factor: integer downsample between the two levels.

    Raises:
        ValueError: the shapes do not correspond.
    """
    down = downsample_area(fine, factor)
    if down.shape != coarse.shape:
        msg = f"fine {fine.shape} downsampled by {factor} gives {down.shape}, but coarse is {coarse.shape}"
        raise ValueError(msg)
    ssim, psnr = paired_ssim_psnr(coarse[None], down[None])
    return {"psnr": float(psnr[0]), "ssim": float(ssim[0])}
