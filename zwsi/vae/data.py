"""Training crops for the VAE: real slide regions at several µm/px, tissue-filtered, augmented, reproducible.

The whole slide is read once per µm/px through `slide_io` (``read_region_mpp``); crops are drawn from candidate
positions on a ``data.stride`` grid beside a held-out vertical strip (``data.holdout``, never trained on: it gives
the validation crops), split by tissue fraction (`slide_io.detect_tissue`) into tissue and glass candidates, and
augmented with the 8 flips/rotations and a small stain jitter in optical density. An optional share of crops comes
from scikit-image's bundled IHC image. Every draw of step ``k`` comes from ``default_rng([seed, k])``.

    sampler = CropSampler(cfg.data, seed=cfg.seed, val_crops=8)
    x, mpp = sampler.batch(step, batch_size=4)        # (4, 3, c, c) in [-1, 1], one µm/px per batch
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slide_io.dihedral import dihedral
from zwsi.vae.config import DataSection


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Perturb stains in optical density: OD' = OD @ (I + strength * N(0, 1)), white glass stays white.

    Args:
        rgb: (h, w, 3) uint8.
        rng: the generator of this draw.
        strength: standard deviation of the 3x3 perturbation; 0 returns ``rgb``.
    """
    if strength <= 0:
        return rgb
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)  # (h, w, 3) >= 0
    mix = np.eye(3, dtype=np.float32) + strength * rng.standard_normal((3, 3)).astype(np.float32)
    out = 256.0 * np.exp(-np.clip(od @ mix, 0.0, None)) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=2)
def _read_slide(path: str, mpps: tuple[float, ...]) -> tuple[tuple[np.ndarray, ...], Any, tuple[int, int], float]:
    """The whole slide at each µm/px (read-only arrays), its tissue mask, level-0 size and µm/px (cached)."""
    import slide_io

    with slide_io.open_slide(path) as slide:
        mask = slide_io.detect_tissue(slide)
        w0, h0 = slide.dimensions
        base = slide.mpp
        images = []
        for mpp in mpps:
            f = mpp / base.x  # level-0 px per output px
            image = slide.read_region_mpp((0, 0), mpp, (max(1, math.floor(w0 / f)), max(1, math.floor(h0 / f))))
            image.setflags(write=False)
            images.append(image)
    return tuple(images), mask, (w0, h0), base.x


@functools.lru_cache(maxsize=16)
def _read_image(path: str, mpp: float, mpps: tuple[float, ...]) -> tuple[np.ndarray | None, ...]:
    """An image file or slide (read whole: small ones only) at each µm/px, None where it holds no 128 px crop.

    Only downsampling is done (a finer µm/px than the image's own is None): upsampled tissue would teach blur.
    """
    from PIL import Image

    if Path(path).suffix.lower() in (".svs", ".tif", ".tiff", ".ndpi"):
        import slide_io

        with slide_io.open_slide(path, mpp=mpp) as slide:
            w0, h0 = slide.dimensions
            base = slide.read_region((0, 0), 0, (w0, h0), as_array=True)
    else:
        from zwsi.vae.evaluate import read_rgb

        base = read_rgb(path)
    out: list[np.ndarray | None] = []
    for target in mpps:
        f = target / mpp
        h, w = round(base.shape[0] / f), round(base.shape[1] / f)
        if f < 0.99 or min(h, w) < 128:
            out.append(None)
            continue
        scaled = base if abs(f - 1) < 0.01 else np.array(Image.fromarray(base).resize((w, h), Image.Resampling.LANCZOS))
        scaled = np.ascontiguousarray(scaled[..., :3])
        scaled.setflags(write=False)
        out.append(scaled)
    return tuple(out)


@dataclass
class _Scale:
    mpp: float
    image: np.ndarray  # (H, W, 3) uint8, the whole slide at mpp
    crop: int
    tissue: np.ndarray  # candidate (y, x) with tissue >= min_tissue, (N, 2)
    glass: np.ndarray  # candidate (y, x) of background, (M, 2)
    val: np.ndarray  # held-out crop positions (K, 2)
    val_crop: int


class CropSampler:
    """Deterministic crops of one slide at several µm/px; step ``k`` draws from ``default_rng([seed, k])``.

    The whole slide is read once per µm/px through ``slide_io`` (``read_region_mpp``); candidate positions lie on
    a ``data.stride`` grid, wholly left of (or right of) the held-out strip, and are split by tissue fraction
    (from :func:`slide_io.detect_tissue`) into tissue and glass candidates.
    """

    def __init__(self, data: DataSection, *, seed: int, val_crops: int = 8) -> None:
        self.data = data
        self.seed = seed
        images, mask, (w0, _h0), base_x = _read_slide(str(Path(data.slide).resolve()), tuple(data.mpps))
        hx0, hx1 = data.holdout[0] * w0, data.holdout[1] * w0
        self.scales = [self._scale(image, mpp, mpp / base_x, mask, (hx0, hx1), val_crops)
                       for image, mpp in zip(images, data.mpps)]
        self._ihc: np.ndarray | None = None
        if data.ihc_prob > 0:
            from skimage import data as skdata

            self._ihc = np.ascontiguousarray(skdata.immunohistochemistry()[..., :3])
        weights = np.asarray(data.mpp_weights, dtype=np.float64)
        self.mpp_p = weights / weights.sum()
        # extra images, resampled once to every µm/px of the ladder at which they hold at least one crop
        self.extra: dict[float, list[np.ndarray]] = {}
        for item in data.extra:
            image = _read_image(str(item["path"]), float(item["mpp"]), tuple(data.mpps))
            for mpp, scaled in zip(data.mpps, image):
                if scaled is not None:
                    self.extra.setdefault(mpp, []).append(scaled)

    def _scale(self, image: np.ndarray, mpp: float, f: float, mask: Any, hold: tuple[float, float],
               val_crops: int) -> _Scale:
        d = self.data
        h, w = image.shape[:2]
        left, right = math.floor(hold[0] / f), math.ceil(hold[1] / f)  # held-out columns at this scale
        widest = max(left, w - right)
        crop = min(d.crop, (min(h, widest) // 8) * 8)
        if crop < 16:
            raise ValueError(f"slide {d.slide} at {mpp} µm/px is {w}x{h} px: no {d.crop} px crop fits beside the "
                             f"held-out strip {d.holdout}; use fewer µm/px or a smaller holdout")
        ys, xs = np.meshgrid(np.arange(0, h - crop + 1, d.stride), np.arange(0, w - crop + 1, d.stride), indexing="ij")
        pos = np.stack([ys.ravel(), xs.ravel()], axis=1)
        outside = (pos[:, 1] + crop <= left) | (pos[:, 1] >= right)
        pos = pos[outside]
        boxes = np.stack([pos[:, 1] * f, pos[:, 0] * f, np.full(len(pos), crop * f), np.full(len(pos), crop * f)], 1)
        frac = mask.fractions(boxes.astype(np.float64))
        tissue, glass = pos[frac >= d.min_tissue], pos[frac <= d.max_background_tissue]
        if len(tissue) == 0:
            raise ValueError(f"no {crop} px crop of {d.slide} at {mpp} µm/px has tissue >= {d.min_tissue}")
        # validation: a regular grid of crops inside the held-out strip, most tissue first
        vcrop = min(crop, ((min(right, w) - left) // 8) * 8, (h // 8) * 8)
        val = np.zeros((0, 2), dtype=np.int64)
        if vcrop >= 16:
            vy, vx = np.meshgrid(np.arange(0, h - vcrop + 1, max(1, vcrop // 2)),
                                 np.arange(left, min(right, w) - vcrop + 1, max(1, vcrop // 2)), indexing="ij")
            vpos = np.stack([vy.ravel(), vx.ravel()], axis=1)
            vboxes = np.stack([vpos[:, 1] * f, vpos[:, 0] * f, np.full(len(vpos), vcrop * f),
                               np.full(len(vpos), vcrop * f)], 1)
            vfrac = mask.fractions(vboxes.astype(np.float64))
            order = np.argsort(-vfrac, kind="stable")
            val = vpos[order[: max(1, val_crops)]]
        return _Scale(mpp, image, crop, tissue, glass, val, vcrop)

    def batch(self, step: int, batch_size: int) -> tuple[Tensor, float]:
        """The training batch of ``step``: ``(B, 3, c, c)`` float in [-1, 1] and its µm/px (one scale per batch)."""
        rng = np.random.default_rng([self.seed, step])
        s = self.scales[int(rng.choice(len(self.scales), p=self.mpp_p))]
        crops = []
        for _ in range(batch_size):
            extra = self.extra.get(s.mpp, [])
            if self._ihc is not None and rng.random() < self.data.ihc_prob:
                src, c = self._ihc, s.crop
                y, x = (int(rng.integers(0, n - c + 1)) for n in src.shape[:2])
            elif extra and rng.random() < self.data.extra_prob:
                src, c = extra[int(rng.integers(len(extra)))], s.crop
                y, x = (int(rng.integers(0, n - c + 1)) for n in src.shape[:2])
            else:
                src, c = s.image, s.crop
                pool = s.glass if len(s.glass) and rng.random() < self.data.background_prob else s.tissue
                y, x = (int(v) for v in pool[int(rng.integers(len(pool)))])
            tile = dihedral(src[y : y + c, x : x + c], int(rng.integers(8)))
            crops.append(stain_jitter(tile, rng, self.data.stain_jitter))
        return to_model(np.stack(crops)), s.mpp

    def validation_sets(self) -> dict[float, np.ndarray]:
        """Held-out crops per µm/px, ``(K, c, c, 3)`` uint8 (scales whose strip holds no crop are left out)."""
        out = {}
        for s in self.scales:
            if len(s.val):
                c = s.val_crop
                out[s.mpp] = np.stack([s.image[y : y + c, x : x + c] for y, x in s.val])
        return out


def to_model(rgb: np.ndarray) -> Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, rounded as :class:`zwsi.vae.VAE` does."""
    return ((x.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
