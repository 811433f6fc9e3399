"""Distribution and image-similarity metrics on MONAI: MMD on features, MS-SSIM diversity, SSIM/PSNR pairs.

Images here are RGB tiles as (N, H, W, 3) uint8 arrays; they go to MONAI as (N, 3, H, W) float in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import MMDMetric, MultiScaleSSIMMetric, PSNRMetric, SSIMMetric
from numpy.typing import ArrayLike, NDArray

MS_SSIM_KERNEL = 11
MS_SSIM_MIN_SIDE = (MS_SSIM_KERNEL - 1) * 2**4 + 1  # MONAI needs H, W > (kernel − 1)·2⁴ for 5 scales


def _tiles(tiles: ArrayLike, name: str) -> NDArray[np.uint8]:
    arr = np.asarray(tiles)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        msg = f"{name} must be RGB tiles (N, H, W, 3) uint8; got shape {arr.shape} dtype {arr.dtype}"
        raise ValueError(msg)
    return arr


def to_tensor(tiles: ArrayLike) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32 in [0, 1]."""
    arr = _tiles(tiles, "tiles")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)


def mmd(x: ArrayLike, y: ArrayLike, *, seed: int = 0) -> float:
    """Unbiased linear-kernel MMD² between two feature samples (`monai.metrics.MMDMetric`, Gretton et al. 2012).

    With a linear kernel this estimates ‖μx − μy‖² without bias, so it can be slightly negative when the two
    samples come from one distribution. MONAI needs equal sample sizes: the larger sample is subsampled (seeded).

    Args:
        x: (n, d) features; y: (m, d) features; n, m ≥ 2.
        seed: seed for the subsample when n ≠ m.

    Raises:
        ValueError: not 2-D, too few samples or different feature sizes.
    """
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if xa.ndim != 2 or ya.ndim != 2 or xa.shape[1] != ya.shape[1] or min(xa.shape[0], ya.shape[0]) < 2:
        msg = f"x and y must be (n >= 2, d) features with equal d; got {xa.shape} and {ya.shape}"
        raise ValueError(msg)
    k = min(xa.shape[0], ya.shape[0])
    rng = np.random.default_rng(seed)
    if xa.shape[0] > k:
        xa = xa[np.sort(rng.choice(xa.shape[0], k, replace=False))]
    if ya.shape[0] > k:
        ya = ya[np.sort(rng.choice(ya.shape[0], k, replace=False))]
    return float(MMDMetric()(torch.from_numpy(xa), torch.from_numpy(ya)))


def random_pairs(n: int, n_pairs: int, *, seed: int = 0) -> NDArray[np.int64]:
    """`n_pairs` distinct unordered index pairs (i < j) from n items (all of them if fewer exist), seeded."""
    if n < 2:
        msg = f"need at least 2 tiles to form pairs; got {n}"
        raise ValueError(msg)
    i, j = np.triu_indices(n, k=1)
    pairs = np.stack([i, j], axis=1)
    if len(pairs) > n_pairs:
        pairs = pairs[np.sort(np.random.default_rng(seed).choice(len(pairs), n_pairs, replace=False))]
    return pairs


def ms_ssim_pairs(tiles: ArrayLike, *, n_pairs: int = 32, seed: int = 0) -> NDArray[np.float64]:
    """MS-SSIM of random pairs of distinct tiles in one set (`MultiScaleSSIMMetric`): a diversity measure.

    High mean MS-SSIM among generated tiles means they look alike (mode collapse); compare with the same measure
    on real tiles.

    Args:
        tiles: (N, H, W, 3) uint8, N ≥ 2, H and W ≥ 161 (five scales with an 11-px kernel).
        n_pairs: most pairs to score.
        seed: pair sampling seed.

    Returns:
        (P,) MS-SSIM per pair.

    Raises:
        ValueError: too few or too small tiles.
    """
    arr = _tiles(tiles, "tiles")
    if min(arr.shape[1:3]) < MS_SSIM_MIN_SIDE:
        msg = f"MS-SSIM needs tiles of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} px; got {arr.shape[1:3]}"
        raise ValueError(msg)
    pairs = random_pairs(arr.shape[0], n_pairs, seed=seed)
    t = to_tensor(arr)
    metric = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=MS_SSIM_KERNEL, reduction="none")
    values = torch.as_tensor(metric(t[pairs[:, 0]], t[pairs[:, 1]]))  # (P, 1)
    return values.reshape(-1).double().numpy()


def paired_ssim_psnr(reference: ArrayLike, test: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-tile SSIM and PSNR (dB) of `test` against `reference` (e.g. VAE reconstructions vs originals).

    Args:
        reference: (N, H, W, 3) uint8 originals.
        test: (N, H, W, 3) uint8 tiles at the same places.

    Returns:
        (ssim, psnr), each (N,). Identical tiles give SSIM 1 and PSNR inf.

    Raises:
        ValueError: shapes differ.
    """
    ref, tst = _tiles(reference, "reference"), _tiles(test, "test")
    if ref.shape != tst.shape:
        msg = f"reference and test must have the same shape; got {ref.shape} and {tst.shape}"
        raise ValueError(msg)
    a, b = to_tensor(ref), to_tensor(tst)
    ssim = torch.as_tensor(SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")(b, a)).reshape(-1)  # (N,)
    psnr = torch.as_tensor(PSNRMetric(max_val=1.0, reduction="none")(b, a)).reshape(-1)  # (N,)
    return ssim.double().numpy(), psnr.double().numpy()
