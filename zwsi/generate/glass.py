"""Glass clean-up: decoded pixels that are glass (pale and unsaturated) become the blank slide background.

The small default VAE renders blank glass inside tissue windows light grey-lilac with faint stripes at its decode
tiles, while windows without tissue are painted `BACKGROUND_RGB`; this blends the one into the other. A pixel's glass
weight rises linearly from 0 to 1 as its HSV saturation falls from ``s_tissue`` to ``s_glass``, times the same ramp
on brightness (value) from ``v_tissue`` up to ``v_glass``; the pixel moves that far toward the background. Tissue
(saturated or dark) is left exactly as decoded. Opt-in per model (`GenerateConfig.glass_cleanup`).
"""

from __future__ import annotations

import numpy as np


def glass_weight(rgb: np.ndarray, *, s_glass: float = 0.06, s_tissue: float = 0.12, v_tissue: float = 0.72,
                 v_glass: float = 0.80) -> np.ndarray:
    """Per-pixel glass weight in [0, 1] of uint8 RGB ``(..., 3)``: 1 = glass, 0 = tissue (float32 ``(...)``)."""
    x = rgb.astype(np.float32) / 255.0
    v = x.max(axis=-1)
    s = np.where(v > 0, (v - x.min(axis=-1)) / np.maximum(v, 1e-6), 0.0)
    pale = np.clip((v - v_tissue) / (v_glass - v_tissue), 0.0, 1.0)
    grey = np.clip((s_tissue - s) / (s_tissue - s_glass), 0.0, 1.0)
    return (pale * grey).astype(np.float32)


def clean_glass(rgb: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """``rgb`` (uint8 ``(..., 3)``) with glass moved toward ``background`` by its `glass_weight` (a new array)."""
    w = glass_weight(rgb)[..., None]  # (..., 1)
    out = rgb.astype(np.float32) * (1.0 - w) + np.asarray(background, np.float32) * w
    return np.rint(out).astype(np.uint8)
