"""Per-tile pathology and image statistics: tissue fraction, stain intensity, nuclei density and size, sharpness,
noise — compared between real and synthetic tiles by `validation.pipeline`.

Nuclei are found as in the classic colour-deconvolution recipe: the hematoxylin channel (rgb2hed), lightly
smoothed, thresholded (Otsu inside tissue, never below `MIN_HEMATOXYLIN`), cleaned of specks and labelled; this is
a density/size statistic, not a segmentation model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from validation.stain import hed, tissue_mask

MIN_HEMATOXYLIN = 0.04  # rgb2hed hematoxylin units; below this a pixel is not nuclear in H&E
MIN_NUCLEUS_UM2 = 8.0  # smaller objects are specks
STATISTICS = ("tissue_fraction", "hematoxylin", "eosin", "nuclei_density", "nucleus_area", "sharpness", "noise_sigma")
"""Names of the per-tile statistics, in table order."""
UNITS = {
    "tissue_fraction": "fraction", "hematoxylin": "HED OD", "eosin": "HED OD", "nuclei_density": "per mm² tissue",
    "nucleus_area": "µm²", "sharpness": "var(Laplacian)", "noise_sigma": "grey levels",
}


@dataclass(frozen=True)
class NucleiStats:
    """Nuclei found in one tile: count, density per mm² of tissue and mean area in µm²."""

    count: int
    density_per_mm2: float
    mean_area_um2: float


def tissue_fraction(tile: NDArray[np.uint8]) -> float:
    """Fraction of a tile's pixels that are tissue (see `validation.stain.tissue_mask`)."""
    return float(tissue_mask(tile).mean())


def nuclei_stats(tile: NDArray[np.uint8], mpp: float) -> NucleiStats:
    """Count and size nuclei in one H&E tile.

    Args:
        tile: (H, W, 3) uint8.
        mpp: µm per pixel of the tile.

    Raises:
        ValueError: mpp not > 0.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops
    from skimage.morphology import remove_small_objects

    if not mpp > 0:
        msg = f"mpp must be > 0 µm/px; got {mpp}"
        raise ValueError(msg)
    tissue = tissue_mask(tile)
    tissue_mm2 = tissue.sum() * (mpp * 1e-3) ** 2
    if tissue.sum() < 64:
        return NucleiStats(0, 0.0, 0.0)
    h = ndimage.gaussian_filter(hed(tile)[..., 0], sigma=1.0)
    threshold = max(float(threshold_otsu(h[tissue])), MIN_HEMATOXYLIN)
    nuclei = remove_small_objects((h > threshold) & tissue, max_size=max(1, int(MIN_NUCLEUS_UM2 / mpp**2)))
    regions = regionprops(label(nuclei))
    if not regions:
        return NucleiStats(0, 0.0, 0.0)
    areas = np.array([r.area for r in regions]) * mpp**2
    return NucleiStats(len(regions), len(regions) / tissue_mm2, float(areas.mean()))


def sharpness(tile: NDArray[np.uint8]) -> float:
    """Variance of the Laplacian of the grey image (grey levels²): falls with blur."""
    from scipy import ndimage

    grey = tile.astype(np.float64).mean(axis=-1)
    return float(ndimage.laplace(grey)[1:-1, 1:-1].var())


def noise_sigma(tile: NDArray[np.uint8]) -> float:
    """Standard deviation of additive Gaussian noise in grey levels (Immerkær, "Fast noise variance estimation", 1996)."""
    from scipy import ndimage

    grey = tile.astype(np.float64).mean(axis=-1)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    response = np.abs(ndimage.convolve(grey, kernel))[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2.0) * response.mean() / 6.0)


def tile_statistics(tiles: NDArray[np.uint8], mpp: float) -> dict[str, NDArray[np.float64]]:
    """Every statistic in `STATISTICS` for each tile.

    Args:
        tiles: (N, H, W, 3) uint8.
        mpp: µm per pixel of the tiles.

    Returns:
        name → (N,) values, plus ``nuclei_count`` (nuclei found per tile, for `validation.verdict`'s premises).
        Stain means are over tissue pixels (NaN for a tile without tissue).
    """
    out: dict[str, list[float]] = {name: [] for name in (*STATISTICS, "nuclei_count")}
    for tile in tiles:
        mask = tissue_mask(tile)
        stains = hed(tile)[mask] if mask.any() else np.full((1, 3), np.nan)
        nuc = nuclei_stats(tile, mpp)
        out["tissue_fraction"].append(float(mask.mean()))
        out["hematoxylin"].append(float(stains[:, 0].mean()))
        out["eosin"].append(float(stains[:, 1].mean()))
        out["nuclei_density"].append(nuc.density_per_mm2)
        out["nucleus_area"].append(nuc.mean_area_um2)
        out["nuclei_count"].append(float(nuc.count))
        out["sharpness"].append(sharpness(tile))
        out["noise_sigma"].append(noise_sigma(tile))
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
