"""Train the project's small VAE (a diffusers ``AutoencoderKL``, spatial factor 8) on real tissue crops.

Data: random square crops of a real slide read through :mod:`slide_io` at several µm/px (default 0.5, 2 and 8,
the generation ladder), tissue-filtered with :func:`slide_io.detect_tissue` plus a share of glass (background)
crops, augmented with the 8 flips/rotations and a small stain jitter in optical density. A vertical strip of the
slide (``data.holdout``, the right part by default) is never trained on and gives the validation crops. An optional
share of crops comes from scikit-image's bundled IHC image.

Loss: L1 on [-1, 1] pixels + ``loss.ssim`` x (1 - SSIM) (MONAI, a perceptual proxy without LPIPS weights) +
``loss.kl`` x KL of the diagonal posterior. AdamW with warmup + cosine, gradient clipping, optional EMA, a guard
that skips non-finite steps and stops after too many in a row. Every random draw of step ``k`` comes from
generators seeded by ``(seed, k)``, so a resumed run equals an uninterrupted one.

Run folder::

    OUT/log.jsonl                        one JSON line per logged step / validation
    OUT/checkpoints/step_0000200/        model.safetensors, ema.safetensors, optimizer.safetensors, state.json
    OUT/vae/                             config.json + diffusion_pytorch_model.safetensors (loads with VAE.from_folder)
    OUT/metrics.json                     held-out PSNR/SSIM per µm/px, latent statistics, timing

The exported ``config.json`` carries ``scaling_factor`` = 1 / std and ``shift_factor`` = mean of the posterior
modes of training crops, so ``(z - shift) * scale`` is ~unit variance, as Z-Image's VAE config does.

Example::

    cfg = load_vae_train_config("configs/vae/small.yaml")
    result = VAETrainer(cfg, out="runs/vae-small").fit()
    vae = VAE.from_folder(result.vae_dir)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

LOG = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
VAE_DIR = "vae"
SSIM_MIN_SIDE = 16  # MONAI's SSIM window is 11 px; images are cropped to multiples of 8
STATS_STEP0 = 10**9  # data draws for the latent statistics: steps no run reaches


# ---- config ---------------------------------------------------------------------------------------------------
MODEL_KINDS = ("kl", "taef1")


@dataclass(frozen=True)
class ModelSection:
    """The autoencoder. ``kind: kl``: a diffusers ``AutoencoderKL`` whose ``len(block_out_channels) - 1`` halvings
    give the spatial factor (4 -> 8). ``kind: taef1``: a diffusers ``AutoencoderTiny`` whose encoder is TAEF1's,
    frozen (``taef1``: its weights, `zwsi.taef1`), so the latents are Z-Image's own, and whose decoder
    (``block_out_channels`` equal widths, ``decoder_blocks`` blocks per stage) is trained here."""

    kind: str = "kl"
    taef1: str | None = None  # kind taef1: folder of taef1_encoder.safetensors (TAESD's layout)
    decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)  # kind taef1: AutoencoderTiny blocks per decoder stage
    decoder_noise: float = 0.0  # kind taef1: std of Gaussian noise on the latents the decoder learns from (raw units),
    # so it also decodes a generator's slightly-off latents as tissue rather than as grain
    taef1_decoder: bool = False  # kind taef1: keep TAEF1's own decoder too; nothing trains (budget.max_steps: 0), the
    # run measures the latent scaling on the data and exports
    distill: bool = False  # kind taef1: learn TAEF1's decoder output, a function of the latent, instead of the pixels
    # (which the latent does not determine: trained on pixels, L1/SSIM average them into blur)
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)
    layers_per_block: int = 1
    latent_channels: int = 16
    norm_num_groups: int = 32
    mid_block_add_attention: bool = False
    init_logvar: float = -6.0  # initial posterior log-variance (encoder conv_out bias of the logvar half)
    init: str | None = None  # a VAE folder (config.json + safetensors) of this shape to start from
    train_encoder: bool = True  # False: the encoder (so the latent space and its scaling) stays exactly the init's

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model.kind = {self.kind!r}; expected one of {list(MODEL_KINDS)}")
        if self.kind == "taef1":
            if self.taef1 is None:
                raise ValueError("model.kind = taef1 needs model.taef1, the folder of taef1_encoder.safetensors")
            if self.train_encoder or len(set(self.block_out_channels)) != 1 or len(self.decoder_blocks) != 4:
                raise ValueError(f"model.kind = taef1 keeps TAEF1's encoder (train_encoder: false) and needs 4 equal "
                                 f"block_out_channels and 4 decoder_blocks, got train_encoder={self.train_encoder}, "
                                 f"block_out_channels={self.block_out_channels}, decoder_blocks={self.decoder_blocks}")
            return
        if not self.train_encoder and self.init is None:
            raise ValueError("model.train_encoder = false needs model.init (the VAE whose encoder is kept)")
        if len(self.block_out_channels) != 4:
            raise ValueError(f"model.block_out_channels needs 4 entries (spatial factor 8), "
                             f"got {self.block_out_channels}")
        bad = [c for c in self.block_out_channels if c < 1 or c % self.norm_num_groups]
        if bad:
            raise ValueError(f"model.block_out_channels {bad} must be positive multiples of norm_num_groups="
                             f"{self.norm_num_groups}")
        if self.latent_channels < 1 or self.layers_per_block < 1:
            raise ValueError(f"model.latent_channels and layers_per_block must be >= 1, got {self.latent_channels}, "
                             f"{self.layers_per_block}")


@dataclass(frozen=True)
class DataSection:
    """Where crops come from. ``slide`` is resolved against the current directory."""

    slide: str = "../shared/data/wsi/CMU-1-Small-Region.svs"
    mpps: tuple[float, ...] = (0.5, 2.0, 8.0)
    mpp_weights: tuple[float, ...] = (0.5, 0.3, 0.2)
    crop: int = 128
    min_tissue: float = 0.5
    background_prob: float = 0.1
    max_background_tissue: float = 0.05
    holdout: tuple[float, float] = (0.75, 1.0)
    ihc_prob: float = 0.0
    stain_jitter: float = 0.05
    stride: int = 4
    extra: tuple[dict[str, Any], ...] = ()  # more H&E images: {path, mpp} (whole images; paths as data.slide)
    extra_prob: float = 0.0  # share of crops drawn from `extra` (at a µm/px the image is large enough for)

    def __post_init__(self) -> None:
        for item in self.extra:
            if not isinstance(item, dict) or set(item) != {"path", "mpp"} or not float(item["mpp"]) > 0:
                raise ValueError(f"data.extra entries must be {{path: FILE, mpp: µm/px > 0}}, got {item!r}")
        if not 0.0 <= self.extra_prob <= 1.0 or (self.extra_prob > 0 and not self.extra):
            raise ValueError(f"data.extra_prob must be in [0, 1] (and > 0 only with data.extra), got {self.extra_prob}")
        if not self.mpps or len(self.mpp_weights) != len(self.mpps):
            raise ValueError(f"data.mpp_weights {self.mpp_weights} must have one weight per data.mpps {self.mpps}")
        if any(m <= 0 for m in self.mpps) or any(w < 0 for w in self.mpp_weights) or sum(self.mpp_weights) <= 0:
            raise ValueError(f"data.mpps must be > 0 and mpp_weights >= 0 with a positive sum, got {self.mpps}, "
                             f"{self.mpp_weights}")
        if self.crop < 16 or self.crop % 8:
            raise ValueError(f"data.crop must be a multiple of 8 and >= 16, got {self.crop}")
        lo, hi = self.holdout
        if not 0.0 < lo < hi <= 1.0:
            raise ValueError(f"data.holdout must be (x0, x1) fractions of the slide width with 0 < x0 < x1 <= 1, "
                             f"got {self.holdout}")
        for name in ("min_tissue", "background_prob", "max_background_tissue", "ihc_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.stain_jitter < 0 or self.stride < 1:
            raise ValueError(f"data.stain_jitter must be >= 0 and data.stride >= 1, got {self.stain_jitter}, "
                             f"{self.stride}")


@dataclass(frozen=True)
class LossSection:
    l1: float = 1.0
    ssim: float = 0.5
    ssim_window: int = 7
    kl: float = 1.0e-6

    def validate(self) -> None:
        """Finite, non-negative loss weights."""
        for name in ("l1", "ssim", "kl"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class OptimSection:
    lr: float = 1.0e-3
    min_lr_ratio: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 1.0e-4
    warmup_steps: int = 20
    grad_clip: float = 1.0

    def validate(self) -> None:
        """Finite, positive learning rate and sane optimiser values (YAML's .inf/.nan would train to NaN)."""
        for name in ("lr", "min_lr_ratio", "weight_decay", "grad_clip", "betas"):
            value = getattr(self, name)
            if not all(math.isfinite(float(v)) for v in (value if isinstance(value, (tuple, list)) else (value,))):
                raise ValueError(f"optim.{name} must be finite, got {value!r}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim: lr must be > 0 (got {self.lr}), weight_decay and grad_clip >= 0, "
                             f"min_lr_ratio in [0, 1]")


@dataclass(frozen=True)
class EMASection:
    enabled: bool = True
    decay: float = 0.99


@dataclass(frozen=True)
class BudgetSection:
    batch_size: int = 4
    max_steps: int = 400

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_steps < 0:
            raise ValueError(f"budget.batch_size must be >= 1 and budget.max_steps >= 0, got {self.batch_size}, "
                             f"{self.max_steps}")


@dataclass(frozen=True)
class CheckpointSection:
    every: int = 50
    keep: int = 2

    def __post_init__(self) -> None:
        if self.every < 1 or self.keep < 1:
            raise ValueError(f"checkpoint.every and checkpoint.keep must be >= 1, got {self.every}, {self.keep}")


@dataclass(frozen=True)
class ValidationSection:
    every: int = 100
    crops_per_mpp: int = 8


@dataclass(frozen=True)
class ExportSection:
    dtype: str = "fp16"
    stats_crops: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "fp32"):
            raise ValueError(f"export.dtype must be 'fp16' or 'fp32', got {self.dtype!r}")


@dataclass(frozen=True)
class VAETrainConfig:
    """One VAE training run; every key has a default, unknown keys are an error."""

    name: str = "vae"
    seed: int = 0
    threads: int = 1
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    ema: EMASection = field(default_factory=EMASection)
    budget: BudgetSection = field(default_factory=BudgetSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    export: ExportSection = field(default_factory=ExportSection)
    health_max_consecutive_nonfinite: int = 5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a mapping: unknown keys raise naming their dotted path; tuples from lists."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        dotted = [f"{where}.{k}" if where else k for k in unknown]
        raise ValueError(f"unknown config key(s) {dotted}; valid keys at {where or 'top level'} are {names}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        has_factory = f.default_factory is not dataclasses.MISSING
        default = f.default_factory() if has_factory else f.default  # type: ignore[misc]
        path = f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, path)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"{path} must be a list, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{path} must be true or false, got {value!r}")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path} must be a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        kwargs[f.name] = value
    return cls(**kwargs)


def vae_train_config_from_dict(data: dict[str, Any]) -> VAETrainConfig:
    """Validate a config mapping (as read from YAML) into a :class:`VAETrainConfig`."""
    cfg = _build(VAETrainConfig, data, "")
    cfg.optim.validate()
    cfg.loss.validate()
    return cfg


def load_vae_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> VAETrainConfig:
    """Read and validate a VAE training YAML; ``overrides`` (nested mapping) replace keys after reading.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad YAML, an unknown key (its dotted path and the valid keys) or a bad value.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VAE training config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data[section] = {**(data.get(section) or {}), **values}
        else:
            data[section] = values
    return vae_train_config_from_dict(data)


# ---- model ----------------------------------------------------------------------------------------------------
def build_autoencoder(model: ModelSection) -> torch.nn.Module:
    """A fresh diffusers ``AutoencoderKL`` of this shape (no quant convs, as the FLUX/Z-Image VAE), or for ``kind:
    taef1`` an ``AutoencoderTiny`` with TAEF1's encoder and a fresh decoder."""
    from diffusers import AutoencoderKL

    if model.kind == "taef1":
        from zwsi.taef1 import taef1_autoencoder

        if model.taef1_decoder:
            return taef1_autoencoder(model.taef1).requires_grad_(False)
        tiny = taef1_autoencoder(model.taef1, decoder_block_out_channels=model.block_out_channels,
                                 num_decoder_blocks=model.decoder_blocks)
        tiny.encoder.requires_grad_(False)
        return tiny

    n = len(model.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=model.block_out_channels,
        layers_per_block=model.layers_per_block,
        latent_channels=model.latent_channels,
        norm_num_groups=model.norm_num_groups,
        mid_block_add_attention=model.mid_block_add_attention,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


# ---- data -----------------------------------------------------------------------------------------------------
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


def dihedral(rgb: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (h, w, c) array (k in 0..7)."""
    out = np.rot90(rgb, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


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


# ---- loss -----------------------------------------------------------------------------------------------------
class VAELoss(torch.nn.Module):
    """L1 (pixels in [-1, 1]) + w * (1 - SSIM) (MONAI ``SSIMLoss`` on [0, 1]) + kl * mean KL per sample."""

    def __init__(self, loss: LossSection) -> None:
        super().__init__()
        from monai.losses import SSIMLoss

        self.cfg = loss
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=loss.ssim_window)

    def forward(self, recon: Tensor, target: Tensor, posterior: Any) -> dict[str, Tensor]:
        l1 = (recon - target).abs().mean()
        ssim = self.ssim((recon.clamp(-1, 1) + 1) / 2, (target + 1) / 2) if self.cfg.ssim else recon.new_zeros(())
        kl = recon.new_zeros(()) if posterior is None else posterior.kl().mean() / (target.shape[-1] * target.shape[-2])
        total = self.cfg.l1 * l1 + self.cfg.ssim * ssim + self.cfg.kl * kl
        return {"loss": total, "l1": l1, "ssim_loss": ssim, "kl": kl}


# ---- checkpoints ----------------------------------------------------------------------------------------------
def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if isinstance(value, Tensor) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().clone().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _state_dict(module: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint folder of a run folder (or None)."""
    root = out / CHECKPOINT_DIR
    found = sorted(p for p in root.glob("step_*") if (p / "state.json").is_file()) if root.is_dir() else []
    return found[-1] if found else None


# ---- training -------------------------------------------------------------------------------------------------
class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class VAETrainResult:
    out: Path
    vae_dir: Path
    steps: int
    losses: list[float]
    metrics: dict[str, Any]


def lr_at(step: int, optim: OptimSection, max_steps: int) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then cosine down to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    span = max(1, max_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    floor = optim.lr * optim.min_lr_ratio
    return floor + (optim.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _latent_mode(autoencoder: torch.nn.Module, x: Tensor) -> Tensor:
    """The posterior mode of an AutoencoderKL, or the output of an AutoencoderTiny's deterministic encoder."""
    encoded = autoencoder.encode(x)
    return encoded.latents if hasattr(encoded, "latents") else encoded.latent_dist.mode()


@torch.no_grad()
def reconstruct(autoencoder: torch.nn.Module, rgb: np.ndarray, batch: int = 8) -> np.ndarray:
    """Posterior-mode reconstruction of (N, H, W, 3) uint8 tiles, as uint8."""
    outs = []
    for i in range(0, len(rgb), batch):
        x = to_model(rgb[i : i + batch])
        z = _latent_mode(autoencoder, x)
        outs.append(to_uint8(autoencoder.decode(z).sample))
    return np.concatenate(outs)


def held_out_metrics(autoencoder: torch.nn.Module, sets: dict[float, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean PSNR (dB) and SSIM of reconstructions per held-out set (``validation.image_metrics``)."""
    from validation.image_metrics import paired_ssim_psnr

    out = {}
    for key, tiles in sets.items():
        ssim, psnr = paired_ssim_psnr(tiles, reconstruct(autoencoder, tiles))
        out[str(key)] = {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "n": int(len(tiles)),
                         "size": int(tiles.shape[1])}
    return out


class VAETrainer:
    """Train, checkpoint, validate and export a small ``AutoencoderKL``.

    Args:
        config: the validated run config.
        out: run folder (created).
        resume: continue from the newest checkpoint in ``out`` (an error when there is none).
        progress: show a tqdm bar.
    """

    def __init__(self, config: VAETrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> None:
        self.cfg = config
        self.out = Path(out)
        self.resume = resume
        self.progress = progress

    # -- setup
    def _setup(self) -> None:
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.model = build_autoencoder(cfg.model).train()
        self.init_scaling: tuple[float, float] | None = None
        if cfg.model.kind == "taef1":
            pass  # TAEF1's encoder is loaded and frozen by build_autoencoder; the decoder starts fresh
        elif cfg.model.init is not None:
            self.init_scaling = self._load_init(Path(cfg.model.init))
        else:
            with torch.no_grad():
                # Start with a small posterior noise (std exp(init_logvar / 2)) instead of diffusers' std ~1: with a
                # tiny KL weight the encoder would otherwise spend thousands of Adam steps (~lr per step on this bias)
                # only shrinking the noise the decoder sees.
                self.model.encoder.conv_out.bias[cfg.model.latent_channels :].fill_(cfg.model.init_logvar)
        if not cfg.model.train_encoder:
            self.model.encoder.requires_grad_(False)  # the latents a transformer was trained on stay valid
        self.ema = build_autoencoder(cfg.model).eval().requires_grad_(False) if cfg.ema.enabled else None
        if self.ema is not None:
            self.ema.load_state_dict(self.model.state_dict())
        self.loss_fn = VAELoss(cfg.loss)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not trainable and cfg.budget.max_steps > 0:
            raise ValueError(f"nothing to train (model.taef1_decoder keeps TAEF1 whole) but budget.max_steps = "
                             f"{cfg.budget.max_steps}; set it to 0 to measure the latent scaling and export")
        if not trainable:  # measure and export only
            trainable = [torch.nn.Parameter(torch.zeros(()))]
        self.opt = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas,
                                     weight_decay=cfg.optim.weight_decay)
        self.sampler = CropSampler(cfg.data, seed=cfg.seed, val_crops=cfg.validation.crops_per_mpp)
        self.val_sets = self.sampler.validation_sets()
        self.step = 0
        self.losses: list[float] = []
        self.elapsed = 0.0
        if self.resume:
            ckpt = latest_checkpoint(self.out)
            if ckpt is None:
                raise FileNotFoundError(f"--resume: no checkpoint in {self.out / CHECKPOINT_DIR}")
            self._load(ckpt)

    def _load_init(self, folder: Path) -> tuple[float, float]:
        """Load ``model.init`` into the fresh model; returns its (scaling_factor, shift_factor)."""
        from safetensors.torch import load_file

        config_file = folder / "config.json"
        weights = sorted(folder.glob("*.safetensors"))
        if not config_file.is_file() or not weights:
            raise FileNotFoundError(f"model.init {folder} is not a VAE folder (config.json + *.safetensors)")
        state = {k: v.float() for k, v in load_file(weights[0]).items()}
        own = self.model.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(own.keys() & state.keys())
                  if state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"model.init {folder} does not fit model (the model section must describe the same "
                             f"AutoencoderKL): missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:3]}")
        self.model.load_state_dict(state)
        config = json.loads(config_file.read_text())
        return float(config["scaling_factor"]), float(config.get("shift_factor") or 0.0)

    def _load(self, ckpt: Path) -> None:
        from safetensors.torch import load_file

        state = json.loads((ckpt / "state.json").read_text())
        saved = state["config"]
        for section in ("model", "data", "loss", "optim"):
            if saved[section] != json.loads(json.dumps(self.cfg.to_dict()[section])):
                raise ValueError(f"cannot resume from {ckpt}: config section {section!r} differs from the checkpoint's "
                                 f"({saved[section]} vs {self.cfg.to_dict()[section]})")
        self.model.load_state_dict(load_file(ckpt / "model.safetensors"))
        if self.ema is not None:
            ema_file = ckpt / "ema.safetensors"
            self.ema.load_state_dict(load_file(ema_file) if ema_file.is_file() else self.model.state_dict())
        _load_optimizer(self.opt, load_file(ckpt / "optimizer.safetensors"), state["optimizer"])
        self.step = int(state["step"])
        self.losses = [float(x) for x in state["losses"]]
        self.elapsed = float(state.get("elapsed_s", 0.0))
        LOG.info("resumed from %s at step %d", ckpt, self.step)

    def _save(self) -> Path:
        from safetensors.torch import save_file

        root = self.out / CHECKPOINT_DIR
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step_{self.step:07d}"
        tmp = root / f".tmp_step_{self.step:07d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        from zwsi.finite import check_finite

        check_finite(_state_dict(self.model), f"VAE checkpoint at step {self.step}")
        save_file(_state_dict(self.model), tmp / "model.safetensors")
        if self.ema is not None:
            save_file(_state_dict(self.ema), tmp / "ema.safetensors")
        tensors, meta = _optimizer_tensors(self.opt)
        save_file(tensors, tmp / "optimizer.safetensors")
        state = {"step": self.step, "losses": self.losses, "elapsed_s": self.elapsed, "optimizer": meta,
                 "config": self.cfg.to_dict()}
        (tmp / "state.json").write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        older = sorted(p for p in root.glob("step_*") if p != final)
        for old in older[: max(0, len(older) - (self.cfg.checkpoint.keep - 1))]:  # keep the newest `keep`
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _teacher(self) -> torch.nn.Module:
        """TAEF1 whole, frozen: the decoder a ``distill`` run learns to reproduce."""
        if not hasattr(self, "_teacher_model"):
            from zwsi.taef1 import taef1_autoencoder

            self._teacher_model = taef1_autoencoder(self.cfg.model.taef1).requires_grad_(False)
        return self._teacher_model

    def _eval_model(self) -> torch.nn.Module:
        return self.ema if self.ema is not None else self.model

    # -- loop
    def _train_step(self) -> float:
        cfg = self.cfg
        x, mpp = self.sampler.batch(self.step, cfg.budget.batch_size)  # (B, 3, c, c)
        lr = lr_at(self.step, cfg.optim, cfg.budget.max_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        if cfg.model.kind == "taef1":
            with torch.no_grad():
                z = self.model.encode(x).latents  # (B, 16, c/8, c/8): TAEF1's latents, a frozen encoder
                if cfg.model.decoder_noise > 0:
                    z = z + cfg.model.decoder_noise * torch.randn(z.shape, generator=gen)
                if cfg.model.distill:  # the teacher's sharp decoding of this latent is the target
                    x = self._teacher().decode(z).sample.clamp(-1, 1)  # (B, 3, c, c)
            recon, posterior = self.model.decode(z).sample, None  # (B, 3, c, c)
        else:
            posterior = self.model.encode(x).latent_dist
            recon = self.model.decode(posterior.sample(gen)).sample  # (B, 3, c, c)
        terms = self.loss_fn(recon, x, posterior)
        self.opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        value = float(terms["loss"].detach())
        if not (math.isfinite(value) and math.isfinite(float(gnorm))):
            self.opt.zero_grad(set_to_none=True)
            return float("nan")
        self.opt.step()
        if self.ema is not None:
            decay = min(cfg.ema.decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                for e, p in zip(self.ema.parameters(), self.model.parameters()):
                    e.lerp_(p, 1 - decay)
        self._last = {k: float(v.detach()) for k, v in terms.items()}
        self._last |= {"lr": lr, "mpp": mpp, "grad_norm": float(gnorm)}
        return value

    def fit(self, stop_at: int | None = None) -> VAETrainResult | None:
        """Train up to ``budget.max_steps`` (from the checkpoint when resuming), then export and measure.

        Args:
            stop_at: stop once this many steps are done, write a checkpoint and return None without exporting, as an
                interrupted run would (continue it with ``resume=True``).
        """
        from tqdm import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        self._setup()
        cfg = self.cfg
        bad_run = 0
        bar = tqdm(total=cfg.budget.max_steps, initial=min(self.step, cfg.budget.max_steps), disable=not self.progress,
                   desc="train-vae", dynamic_ncols=True)
        end = cfg.budget.max_steps if stop_at is None else min(stop_at, cfg.budget.max_steps)
        while self.step < end:
            t0 = time.perf_counter()
            value = self._train_step()
            self.elapsed += time.perf_counter() - t0
            if not math.isfinite(value):
                bad_run += 1
                LOG.warning("step %d: non-finite loss/gradient, skipped (%d in a row)", self.step, bad_run)
                if bad_run >= cfg.health_max_consecutive_nonfinite:
                    raise NonFiniteLossError(f"{bad_run} consecutive non-finite steps at step {self.step}; "
                                             f"lower optim.lr (now {cfg.optim.lr}) or check the data")
            else:
                bad_run = 0
            self.losses.append(value)
            self.step += 1
            self._log({"step": self.step, "elapsed_s": round(self.elapsed, 2), **getattr(self, "_last", {})})
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
            if self.step % cfg.validation.every == 0 and self.step < cfg.budget.max_steps:
                metrics = held_out_metrics(self._eval_model(), self.val_sets)
                self._log({"step": self.step, "val": metrics})
                LOG.info("step %d held-out %s", self.step, metrics)
            if self.step % cfg.checkpoint.every == 0 or self.step == end:
                self._save()
        bar.close()
        return self._finish() if self.step >= cfg.budget.max_steps else None

    # -- export
    @torch.no_grad()
    def latent_stats(self, model: torch.nn.Module) -> tuple[float, float]:
        """Mean and std of posterior modes over ``export.stats_crops`` training crops (fixed draws)."""
        values = []
        n = self.cfg.export.stats_crops
        for i in range(0, n, 8):
            x, _ = self.sampler.batch(STATS_STEP0 + i, min(8, n - i))  # draws no training step uses
            values.append(_latent_mode(model, x).flatten())
        z = torch.cat(values).double()
        return float(z.mean()), float(z.std())

    def _finish(self) -> VAETrainResult:
        model = self._eval_model().eval()
        mean, std = self.latent_stats(model)
        if not self.cfg.model.train_encoder and self.init_scaling is not None:
            # the encoder is the init's: keep its latent scaling exactly, so latents prepared with it stay valid
            std, mean = 1.0 / self.init_scaling[0], self.init_scaling[1]
        export = build_autoencoder(self.cfg.model)
        export.load_state_dict(model.state_dict())
        export.register_to_config(scaling_factor=round(1.0 / std, 6), shift_factor=round(mean, 6))
        dtype = torch.float16 if self.cfg.export.dtype == "fp16" else torch.float32
        export = export.to(dtype)
        vae_dir = self.out / VAE_DIR
        tmp = self.out / f".tmp_{VAE_DIR}"
        shutil.rmtree(tmp, ignore_errors=True)
        export.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(vae_dir, ignore_errors=True)
        os.replace(tmp, vae_dir)
        # measure what ships: the exported (possibly fp16-rounded) weights, run in fp32
        shipped = export.float().eval()
        held = held_out_metrics(shipped, self.val_sets)
        params = sum(p.numel() for p in shipped.parameters())
        weights = vae_dir / "diffusion_pytorch_model.safetensors"
        metrics = {
            "steps": self.step,
            "train_seconds": round(self.elapsed, 1),
            "params": params,
            "weights_bytes": weights.stat().st_size,
            "storage_dtype": self.cfg.export.dtype,
            "latent_mean": mean,
            "latent_std": std,
            "scaling_factor": round(1.0 / std, 6),
            "shift_factor": round(mean, 6),
            "held_out_cmu": held,
            "final_train_loss": next((v for v in reversed(self.losses) if math.isfinite(v)), float("nan")),
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self._log({"step": self.step, "final": metrics})
        return VAETrainResult(self.out, vae_dir, self.step, self.losses, metrics)


# ---- evaluation on other images -------------------------------------------------------------------------------
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

    from validation.image_metrics import paired_ssim_psnr

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
    ssim, psnr = paired_ssim_psnr(rgb[None], recon[None])
    return float(psnr[0]), float(ssim[0])


def iter_images(paths: list[str | Path]) -> Iterator[tuple[Path, np.ndarray]]:
    """(path, RGB) of every image file given or inside a given folder (sorted)."""
    exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(q for q in p.iterdir() if q.suffix.lower() in exts)
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"image {p} does not exist")
        for f in files:
            yield f, read_rgb(f)
