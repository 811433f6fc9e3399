"""Blank glass: what windows without tissue hold, in latents and in pixels; shared by `zwsi prepare` and generation.

Training (`zwsi.train.prepare`) fills the windows of a slide that hold no tissue with `background_latents`, and
generation fills the windows whose parent level shows no tissue with the same latents, without a model call; after
decoding, generation paints those windows `BACKGROUND_RGB` (`glass_boxes` finds them by their latents), because a
VAE decodes a uniform latent field poorly (GroupNorm sees no variance) and glass is glass.

    fill = background_latents(vae, plan.config)            # (C, n, n), one latent vector repeated
    boxes = glass_boxes(plan, level, store.read, fill)      # pixel boxes of the level's background windows
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from zwsi.planner import PlanConfig, ReadLatents, SlidePlan

BACKGROUND_RGB = (255, 255, 255)
"""The blank slide background windows without tissue are filled with (white glass)."""

PixelBox = tuple[tuple[int, int], tuple[int, int]]
"""``((y0, y1), (x0, x1))`` in pixels of a level."""


def background_latents(vae: Any, config: PlanConfig) -> np.ndarray:
    """Latents ``(C, n, n)`` of blank glass (`BACKGROUND_RGB`): what windows without tissue are filled with.

    One latent vector, repeated: the VAE's encoding at the centre of a blank window (away from the zero padding at
    its border). Uniform latents decode to uniform glass with no window grid showing, and the VAE decodes the
    identical tiles of a blank area once (`zwsi.vae.tiling.iter_tiled` reuses outputs of identical tiles).
    """
    n = config.window_latents
    n_px = n * config.vae_factor
    blank = np.empty((n_px, n_px, 3), np.uint8)
    blank[:] = BACKGROUND_RGB
    z = vae.encode(blank).float().cpu().numpy()  # (C, n, n)
    centre = z[:, n // 2, n // 2]  # (C,)
    return np.ascontiguousarray(np.broadcast_to(centre[:, None, None], z.shape))


def glass_boxes(plan: SlidePlan, level: int, read: ReadLatents, fill: np.ndarray) -> list[PixelBox]:
    """Pixel boxes of the level's background windows: those whose stored latents are exactly ``fill``.

    Args:
        plan: the slide plan.
        level: the level.
        read: ``read(level, rows, cols)`` of the latent store.
        fill: `background_latents` of the plan's geometry, ``(C, n, n)``.
    """
    cfg, f = plan.config, plan.config.vae_factor
    h, w = plan.level(level).slide_pixels
    rows, cols = plan.level(level).latent_shape
    boxes = []
    for win in plan.windows(level):
        (r0, r1), (c0, c1) = win.latent_box(cfg)
        r1, c1 = min(r1, rows), min(c1, cols)
        z = read(level, (r0, r1), (c0, c1))
        if np.array_equal(z, fill[:, : r1 - r0, : c1 - c0].astype(z.dtype)):
            boxes.append(((r0 * f, min(r1 * f, h)), (c0 * f, min(c1 * f, w))))
    return boxes


def paint_glass(band: np.ndarray, y0: int, boxes: list[PixelBox]) -> np.ndarray:
    """Paint the parts of ``boxes`` inside a decoded row band (rows ``y0 ..``, (h, w, 3) uint8) `BACKGROUND_RGB`."""
    for (r0, r1), (c0, c1) in boxes:
        if r0 < y0 + band.shape[0] and r1 > y0:
            band[max(r0 - y0, 0) : r1 - y0, c0:c1] = BACKGROUND_RGB
    return band
