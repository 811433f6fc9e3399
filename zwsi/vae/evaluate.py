"""How well a VAE reconstructs: PSNR and SSIM (MONAI) on held-out crops and on image files.

The metrics are MONAI's (`SSIMMetric`, `PSNRMetric` on [0, 1] RGB), as `validation.image_metrics` computes them;
`zwsi` does not import `validation` (DESIGN §1: data flows one way), so the two MONAI calls are made here.

    held_out_metrics(autoencoder, {0.5: tiles})         # {"0.5": {"psnr": .., "ssim": .., "n": 8, "size": 128}}
    psnr, ssim = reconstruction_metrics(VAE.from_folder("vae"), rgb, tile=16)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zwsi.vae.data import to_model, to_uint8

SSIM_MIN_SIDE = 16  # MONAI's SSIM window is 11 px; images are cropped to multiples of 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def ssim_psnr(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile SSIM and PSNR (dB) of ``test`` against ``reference``, both (N, H, W, 3) uint8: two (N,) arrays."""
    from monai.metrics import PSNRMetric, SSIMMetric

    if reference.shape != test.shape or reference.ndim != 4 or reference.shape[-1] != 3:
        raise ValueError(f"reference and test must be RGB tiles (N, H, W, 3) of one shape, got {reference.shape} "
                         f"and {test.shape}")
    a, b = (torch.from_numpy(np.ascontiguousarray(t)).permute(0, 3, 1, 2).float() / 255.0 for t in (reference, test))
    ssim = torch.as_tensor(SSIMMetric(spatial_dims=2, data_range=1.0, reduction="none")(b, a)).reshape(-1)  # (N,)
    psnr = torch.as_tensor(PSNRMetric(max_val=1.0, reduction="none")(b, a)).reshape(-1)  # (N,)
    return ssim.double().numpy(), psnr.double().numpy()


@torch.no_grad()
def latent_mode(autoencoder: Any, x: Any) -> Any:
    """The posterior mode of an AutoencoderKL, or the output of an AutoencoderTiny's deterministic encoder."""
    encoded = autoencoder.encode(x)
    return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mode()


def reconstruct(autoencoder: Any, rgb: np.ndarray, batch: int = 8) -> np.ndarray:
    """Posterior-mode reconstruction of (N, H, W, 3) uint8 tiles, as uint8 (on the autoencoder's device)."""
    device = next(autoencoder.parameters()).device
    outs = []
    for i in range(0, len(rgb), batch):
        x = to_model(rgb[i : i + batch]).to(device)  # (b, 3, H, W)
        z = latent_mode(autoencoder, x)
        outs.append(to_uint8(autoencoder.decode(z).sample.cpu()))
    return np.concatenate(outs)


def held_out_metrics(autoencoder: Any, sets: dict[float, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) and SSIM of reconstructions per held-out set, keyed by µm/px."""
    out = {}
    for key, tiles in sets.items():
        ssim, psnr = ssim_psnr(tiles, reconstruct(autoencoder, tiles))
        out[str(key)] = {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "n": int(len(tiles)),
                         "size": int(tiles.shape[1])}
    return out


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 (alpha dropped)."""
    from PIL import Image

    with Image.open(path) as img:
        return np.array(img.convert("RGB"))  # writable: torch.from_numpy warns on read-only arrays


def reconstruction_metrics(vae: Any, rgb: np.ndarray, *, downsample: int = 1,
                           tile: int | None = None) -> tuple[float, float]:
    """(PSNR dB, SSIM) of ``vae``'s reconstruction of one image, cropped to a multiple of 8.

    Args:
        vae: a :class:`zwsi.vae.VAE`.
        rgb: (H, W, 3) uint8.
        downsample: shrink the image by this factor first (Lanczos), to mimic a coarser µm/px.
        tile: encode and decode tile by tile (``encode_tiled``/``decode_tiled``, tile in latents, overlap tile/4)
            instead of the whole image at once.
    """
    from PIL import Image

    if downsample < 1:
        raise ValueError(f"downsample must be >= 1, got {downsample}")
    if downsample > 1:
        h, w = rgb.shape[:2]
        rgb = np.array(Image.fromarray(rgb).resize((w // downsample, h // downsample), Image.Resampling.LANCZOS))
    f = vae.spatial_factor
    h, w = (rgb.shape[0] // f) * f, (rgb.shape[1] // f) * f
    if min(h, w) < SSIM_MIN_SIDE:
        raise ValueError(f"image of {rgb.shape[1]}x{rgb.shape[0]} px is too small: SSIM needs >= {SSIM_MIN_SIDE} px "
                         f"per side after cropping to a multiple of {f}")
    rgb = np.ascontiguousarray(rgb[:h, :w])
    if tile is None:
        recon = vae.decode(vae.encode(rgb))
    else:
        overlap = max(1, tile // 4)
        recon = vae.decode_tiled(vae.encode_tiled(rgb, tile=tile, overlap=overlap), tile=tile, overlap=overlap)
    ssim, psnr = ssim_psnr(rgb[None], recon[None])
    return float(psnr[0]), float(ssim[0])


def iter_images(paths: list[str | Path]) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, RGB) of every image file given or inside a given folder (sorted)."""
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"image {p} does not exist")
        for f in files:
            yield f, read_rgb(f)
