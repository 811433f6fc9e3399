"""Known damage to plant in real tiles or slides, to check that the metrics see it: stain shift, blur, noise,
seams and copies. Used by tests, notebooks and benchmarks; never applied to the data being validated.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def stain_shift(tiles: NDArray[np.uint8], hematoxylin: float = 1.4, eosin: float = 0.7) -> NDArray[np.uint8]:
    """Scale the hematoxylin and eosin concentrations (skimage HED deconvolution) and recompose RGB."""
    from skimage.color import hed2rgb, rgb2hed

    flat = tiles.reshape(-1, *tiles.shape[-3:]) if tiles.ndim == 4 else tiles[None]
    out = []
    for tile in flat:
        h = rgb2hed(tile)
        h[..., 0] *= hematoxylin
        h[..., 1] *= eosin
        out.append(np.clip(np.round(hed2rgb(h) * 255.0), 0, 255).astype(np.uint8))
    result = np.stack(out)
    return result if tiles.ndim == 4 else result[0]


def blur(tiles: NDArray[np.uint8], sigma: float = 2.0) -> NDArray[np.uint8]:
    """Gaussian blur of each tile (σ in pixels, channels separate)."""
    from scipy import ndimage

    spatial = (sigma, sigma, 0) if tiles.ndim == 3 else (0, sigma, sigma, 0)
    return np.clip(np.round(ndimage.gaussian_filter(tiles.astype(np.float64), spatial)), 0, 255).astype(np.uint8)


def noise(tiles: NDArray[np.uint8], sigma: float = 12.0, seed: int = 0) -> NDArray[np.uint8]:
    """Add Gaussian noise of σ grey levels (seeded)."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(tiles + rng.normal(0.0, sigma, tiles.shape)), 0, 255).astype(np.uint8)


def window_offsets(image: NDArray[np.uint8], window: int, amplitude: float = 20.0, seed: int = 0
                   ) -> NDArray[np.uint8]:
    """Add a random brightness offset per `window`×`window` window: seams on the window grid."""
    rng = np.random.default_rng(seed)
    out = image.astype(np.float64)
    for r in range(0, image.shape[0], window):
        for c in range(0, image.shape[1], window):
            out[r:r + window, c:c + window] += rng.uniform(-amplitude, amplitude)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
