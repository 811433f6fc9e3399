"""The VAE training configuration: the AutoencoderKL's shape, the crops, the loss, and the core's sections.

Read by the project's one config loader (`zwsi.typed_config`): every key has a default, an unknown key or a value of
the wrong type is an error naming the key and the file. The optimiser, EMA, checkpoint, health and log sections are
the training core's own (`zwsi.train.config`), with the VAE's defaults: cosine decay to 0.1 x lr after 20 warm-up
steps, an EMA of decay 0.99 with warm-up, a checkpoint every 50 steps.

    cfg = load_vae_train_config("configs/vae/small.yaml", overrides={"budget": {"max_steps": 100}})
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zwsi.train.config import CheckpointConfig, EmaConfig, HealthConfig, LogConfig, OptimConfig
from zwsi.typed_config import from_mapping, merge, read_yaml

MODEL_KINDS = ("kl", "taef1")


@dataclass(frozen=True)
class ModelSection:
    """The autoencoder. ``kind: kl``: a diffusers ``AutoencoderKL`` whose ``len(block_out_channels) - 1`` halvings
    give the spatial factor (4 -> 8). ``kind: taef1``: a diffusers ``AutoencoderTiny`` whose encoder is TAEF1's,
    frozen (``taef1``: its weights, `zwsi.taef1`), so the latents are Z-Image's own; its decoder is TAEF1's
    (``taef1_decoder``: nothing trains) or one of equal ``block_out_channels`` and ``decoder_blocks`` trained here."""

    kind: str = "kl"
    taef1: str | None = None  # kind taef1: folder of taef1_encoder.safetensors (TAESD's layout)
    taef1_decoder: bool = False  # kind taef1: keep TAEF1's own decoder too; nothing trains (budget.max_steps: 0),
    # the run measures the latent scaling on the data and exports
    decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)  # kind taef1: AutoencoderTiny blocks per decoder stage
    decoder_noise: float = 0.0  # kind taef1: std of Gaussian noise on the latents the decoder learns from (raw units)
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
    """Where crops come from (`zwsi.vae.data.CropSampler`). ``slide`` is resolved against the current directory."""

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
    """L1 + ``ssim`` x (1 - SSIM) + ``kl`` x KL (`zwsi.vae.train.VAELoss`)."""

    l1: float = 1.0
    ssim: float = 0.5
    ssim_window: int = 7
    kl: float = 1.0e-6

    def __post_init__(self) -> None:
        """Finite, non-negative loss weights."""
        for name in ("l1", "ssim", "kl"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class BudgetSection:
    batch_size: int = 4
    max_steps: int = 400

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_steps < 0:
            raise ValueError(f"budget.batch_size must be >= 1 and budget.max_steps >= 0, got {self.batch_size}, "
                             f"{self.max_steps}")


@dataclass(frozen=True)
class ValidationSection:
    """Held-out PSNR/SSIM every ``every`` steps on ``crops_per_mpp`` crops per µm/px of the held-out strip."""

    every: int = 100
    crops_per_mpp: int = 8


@dataclass(frozen=True)
class ExportSection:
    """The exported ``vae/`` folder: storage dtype, and the training crops its latent scaling is measured on."""

    dtype: str = "fp16"
    stats_crops: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "fp32"):
            raise ValueError(f"export.dtype must be 'fp16' or 'fp32', got {self.dtype!r}")


def _optim() -> OptimConfig:
    return OptimConfig(lr=1.0e-3, betas=[0.9, 0.99], weight_decay=1.0e-4, warmup_steps=20, schedule="cosine",
                       min_lr_ratio=0.1, grad_clip=1.0)


@dataclass(frozen=True)
class VAETrainConfig:
    """One VAE training run; every key has a default, unknown keys are an error."""

    name: str = "vae"
    seed: int = 0
    threads: int = 1
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimConfig = field(default_factory=_optim)
    ema: EmaConfig = field(default_factory=lambda: EmaConfig(decay=0.99, warmup=True))
    budget: BudgetSection = field(default_factory=BudgetSection)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=50, keep=2))
    health: HealthConfig = field(default_factory=HealthConfig)
    log: LogConfig = field(default_factory=lambda: LogConfig(tensorboard=False))
    validation: ValidationSection = field(default_factory=ValidationSection)
    export: ExportSection = field(default_factory=ExportSection)

    def __post_init__(self) -> None:
        for section in (self.optim, self.ema, self.checkpoint, self.health):
            section.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def vae_train_config_from_dict(data: dict[str, Any], where: str = "config") -> VAETrainConfig:
    """Validate a config mapping (as read from YAML) into a :class:`VAETrainConfig`."""
    return from_mapping(VAETrainConfig, data, where=where)


def load_vae_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> VAETrainConfig:
    """Read and validate a VAE training YAML; ``overrides`` (nested mapping) replace keys after reading.

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad YAML, an unknown key (its dotted path and the valid keys), a wrong type or a bad value.
    """
    return vae_train_config_from_dict(merge(read_yaml(path, "VAE training config"), overrides or {}), where=str(path))
