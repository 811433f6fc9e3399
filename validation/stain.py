"""Stain statistics of H&E tiles: optical density, HED colour deconvolution and Macenko stain vectors.

Optical density OD = −log10((I + 1) / 256) per channel (Beer-Lambert). HED uses `skimage.color.rgb2hed`
(Ruifrok & Johnston 2001). Macenko stain vectors use MONAI's `ExtractHEStains` (Macenko et al. 2009), which
takes (H, W, 3) uint8 and returns the (3, 2) matrix whose columns are the H and E OD directions.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

TISSUE_OD = 0.15  # Macenko's β: pixels with OD below this in every channel are background


def optical_density(tile: NDArray[np.uint8]) -> NDArray[np.float64]:
    """(H, W, 3) uint8 → (H, W, 3) OD."""
    return -np.log10((tile.astype(np.float64) + 1.0) / 256.0)


def tissue_mask(tile: NDArray[np.uint8], od_threshold: float = TISSUE_OD) -> NDArray[np.bool_]:
    """Pixels whose OD exceeds `od_threshold` in some channel (not bright background) and that are not black."""
    od = optical_density(tile)
    return (od.max(axis=-1) > od_threshold) & (tile.max(axis=-1) > 20)


def hed(tile: NDArray[np.uint8]) -> NDArray[np.float64]:
    """Colour deconvolution into hematoxylin, eosin and DAB channels, (H, W, 3)."""
    from skimage.color import rgb2hed

    return rgb2hed(tile)


def hed_tissue_pixels(tiles: NDArray[np.uint8], *, max_pixels: int = 20000, seed: int = 0) -> NDArray[np.float64]:
    """HED values of a random sample of tissue pixels over all tiles, (P, 3) — for distribution plots and tests."""
    rng = np.random.default_rng(seed)
    per_tile = max(1, max_pixels // max(1, len(tiles)))
    out = []
    for tile in tiles:
        values = hed(tile)[tissue_mask(tile)]
        if len(values) > per_tile:
            values = values[rng.choice(len(values), per_tile, replace=False)]
        out.append(values)
    return np.concatenate(out) if out else np.zeros((0, 3))


def macenko_vectors(tile: NDArray[np.uint8]) -> NDArray[np.float64] | None:
    """Macenko H and E stain vectors of one tile (MONAI), (3, 2) unit columns; None when it has too little tissue."""
    from monai.apps.pathology.transforms import ExtractHEStains

    try:
        vectors = np.asarray(ExtractHEStains()(np.ascontiguousarray(tile)), dtype=np.float64)
    except ValueError:  # "All pixels of the input image are below the absorbance threshold."
        return None
    if not np.all(np.isfinite(vectors)):
        return None
    return vectors / np.linalg.norm(vectors, axis=0, keepdims=True)


def mean_stain_vectors(vectors: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean of per-tile (T, 3, 2) stain matrices, renormalised to unit columns, (3, 2)."""
    mean = np.asarray(vectors).mean(axis=0)
    return mean / np.linalg.norm(mean, axis=0, keepdims=True)


def stain_angles(a: NDArray[np.float64], b: NDArray[np.float64]) -> tuple[float, float]:
    """Angles in degrees between the H columns and between the E columns of two (3, 2) stain matrices."""
    cos = np.clip(np.sum(a * b, axis=0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0)), -1.0, 1.0)
    h, e = np.degrees(np.arccos(cos))
    return float(h), float(e)
