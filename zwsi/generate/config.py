"""The generation config: window geometry, sampling, tissue, decoding, storage and output settings.

One dataclass, read by the project's one config loader (`zwsi.typed_config`: unknown keys and wrong types are
errors naming the key and the file), with named presets and YAML files (``configs/generate/*.yaml``). The window
geometry is the planner's `PlanConfig`, nested as ``plan:``. Resolution order for a run: the preset, then a model
folder's ``zwsi_generate.yaml`` (a fine-tuned model states the window geometry it was trained on), then
``--config FILE``, then CLI flags.

    cfg = GenerateConfig.preset("tiny").merged({"batch_size": 1})
    cfg = load_generate_config("configs/generate/z-image-turbo.yaml")

Model folders written before the plan was nested state its four keys (``window_tokens``, ``context_tokens``,
``overview_margin``, ``factor``) at the top level; they are read into ``plan`` (`LEGACY_PLAN_KEYS`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.conditioning import reject_prompt_enhancer
from slide_io.formats import DEFAULT_FORMAT, FORMATS
from zwsi.planner import PlanConfig
from zwsi.typed_config import from_mapping, read_yaml

MODEL_CONFIG_NAME = "zwsi_generate.yaml"
"""A model folder's own generation settings (window geometry it was trained on), read by `SlideGenerator`."""

DTYPES = ("fp32", "bf16", "fp16")
LATENT_DTYPES = ("float16", "float32")
COMPRESSIONS = ("jpeg", "deflate", "lzw", "zstd", "none")
PHI_POLICIES = ("refuse", "redact", "allow")
LEGACY_PLAN_KEYS = ("window_tokens", "context_tokens", "overlap_tokens", "overview_margin", "factor")
"""Plan keys a config may still state at the top level (the flat layout of earlier model folders)."""
MODEL_PLAN_KEYS = ("patch_size", "vae_factor", "latent_channels")
"""Plan fields that come from the model (the transformer's patch, the VAE's factor and channels), not the config."""
OUTPUT_NEUTRAL = ("batch_size", "device", "format")
"""Settings that do not change the slide's pixels (left out of the config hash, so a run may resume with other
values; the container is the file itself)."""


@dataclass(frozen=True)
class GenerateConfig:
    """Everything about how a slide is generated, apart from the model weights and the request.

    Attributes:
        plan: the window geometry (`PlanConfig`: window, neighbour-strip and overview-margin tokens, the ladder
            factor); its patch_size, vae_factor and latent_channels are the model's and are filled in when a
            `SlideGenerator` is built.
        coarsest_mpp: the ladder stops before getting coarser than this µm/px.
        batch_size: windows per model call (per process).
        steps: sampling steps (model calls per window without CFG); the CLI's ``--steps`` overrides it.
        shift: schedule shift; None takes the model's ``scheduler/scheduler_config.json`` (else 3.0).
        guidance: CFG scale (0 = off, as Turbo); the unconditional branch drops the report (L = 0).
        cfg_truncation: CFG is off on steps whose model time t exceeds this.
        cfg_normalization: Z-Image's CFG norm cap (0 = off).
        tissue: skip (fill with background) the windows whose parent level shows no tissue.
        tissue_mpp: µm/px at which the parent level is checked for tissue.
        min_tissue_fraction: a window is generated when its parent footprint's tissue fraction exceeds this.
        vae_tile: VAE decode tile in latents.
        vae_overlap: VAE decode tile overlap in latents.
        latent_dtype: dtype of the latent store ("float16" halves the disk; "float32" keeps the sampler's values).
        compression: TIFF tile compression.
        format: the container (`slide_io.formats`): "svs" (default; every measured reader sees µm/px, objective
            power and associated images), "ome-tiff" (Bio-Formats / QuPath) or "tiff" (generic pyramidal TIFF).
        quality: JPEG quality.
        tile_size: TIFF tile edge in pixels.
        phi_policy: what to do with report text that likely holds PHI: "refuse", "redact" or "allow".
        dtype: transformer dtype.
        device: "cpu", "cuda", "cuda:1"...; None picks the process's accelerator (accelerate) or the CPU.
        glass_cleanup: after decoding, blend pale unsaturated pixels (glass) toward the blank background
            (`zwsi.generate.glass.clean_glass`); for VAEs that render glass grey or striped (the default model's).
        paint_glass: paint windows filled as background pure white after decoding (for codecs that decode a uniform
            latent poorly, as the first built-in model's did); off, the codec renders the glass itself, so windows
            the overlap blended into glass meet untouched glass without a step.
        plan_override: generate with geometry or a shift other than the model's training plan (``zwsi_plan.json``)
            on purpose (warned); without it such a config is refused.
    """

    plan: PlanConfig = field(default_factory=PlanConfig)
    coarsest_mpp: float = 8.0
    batch_size: int = 4
    steps: int = 8
    shift: float | None = None
    guidance: float = 0.0
    cfg_truncation: float = 1.0
    cfg_normalization: float = 0.0
    tissue: bool = True
    tissue_mpp: float = 16.0
    min_tissue_fraction: float = 0.0
    vae_tile: int = 128
    vae_overlap: int = 16
    latent_dtype: str = "float16"
    compression: str = "jpeg"
    format: str = DEFAULT_FORMAT
    quality: int = 90
    tile_size: int = 256
    phi_policy: str = "refuse"
    dtype: str = "bf16"
    device: str | None = None
    glass_cleanup: bool = False
    paint_glass: bool = True
    plan_override: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # YAML's .nan and .inf pass every `<` and `>` check below
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"generate config: {f.name} must be a finite number, got {value}")
        for name in ("batch_size", "steps", "vae_tile", "tile_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"generate config: {name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.vae_overlap < self.vae_tile:
            raise ValueError(f"generate config: vae_overlap must be in [0, vae_tile={self.vae_tile}), got "
                             f"{self.vae_overlap}")
        for name in ("coarsest_mpp", "tissue_mpp"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"generate config: {name} must be > 0, got {getattr(self, name)!r}")
        if self.shift is not None and not self.shift > 0:
            raise ValueError(f"generate config: shift must be > 0 (or null for the model's), got {self.shift}")
        if self.guidance < 0:
            raise ValueError(f"generate config: guidance must be >= 0, got {self.guidance}")
        if not 0 <= self.min_tissue_fraction < 1:
            raise ValueError(f"generate config: min_tissue_fraction must be in [0, 1), got {self.min_tissue_fraction}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"generate config: quality must be in 1..100, got {self.quality}")
        if self.tile_size % 16:
            raise ValueError(f"generate config: tile_size must be a multiple of 16, got {self.tile_size}")
        for name, allowed in (("latent_dtype", LATENT_DTYPES), ("compression", COMPRESSIONS), ("format", FORMATS),
                              ("phi_policy", PHI_POLICIES), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"generate config: {name} = {getattr(self, name)!r}; expected one of {list(allowed)}")

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> GenerateConfig:
        """A named preset: "z-image-turbo" (1024² windows, 8 steps, bf16), "zwsi-small" (the built-in default
        model on CPU) or "tiny" (CPU tests).

        Raises:
            ValueError: unknown name (lists the presets).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown generate preset {name!r}; expected one of {sorted(PRESETS)}")
        return from_mapping(cls, PRESETS[name], where=f"generate preset {name!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: GenerateConfig | None = None, where: str = "config") -> \
            GenerateConfig:
        """``base`` (default: the dataclass defaults) with the keys of ``data`` replaced (`zwsi.typed_config`).

        Raises:
            ValueError: an unknown key (the valid ones are listed), a prompt-enhancer key, a value of the wrong
                type, or a bad value.
        """
        reject_prompt_enhancer(data, where=where)
        return from_mapping(cls, _nest_legacy_plan(data, where), where=where, base=base)

    def merged(self, overrides: Mapping[str, Any], where: str = "overrides") -> GenerateConfig:
        """A copy with ``overrides`` applied (None values are ignored, so unset CLI flags change nothing)."""
        return self.from_dict({k: v for k, v in overrides.items() if v is not None}, base=self, where=where)

    def with_model(self, *, patch_size: int, vae_factor: int, latent_channels: int) -> GenerateConfig:
        """This config with the model's own plan fields (see ``plan``)."""
        plan = dataclasses.replace(self.plan, patch_size=int(patch_size), vae_factor=int(vae_factor),
                                   latent_channels=int(latent_channels))
        return dataclasses.replace(self, plan=plan)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def settings(self) -> dict[str, Any]:
        """What changes a slide, flat as the provenance records it (``generate_config``): the plan's geometry at
        the top level, without the model's own plan fields (the model hash covers them) and `OUTPUT_NEUTRAL`."""
        flat = {k: v for k, v in self.to_dict().items() if k not in OUTPUT_NEUTRAL and k != "plan"}
        return flat | {k: getattr(self.plan, k) for k in LEGACY_PLAN_KEYS}


def _nest_legacy_plan(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``data`` with top-level plan keys (`LEGACY_PLAN_KEYS`) moved into ``plan``."""
    flat = {k: data[k] for k in LEGACY_PLAN_KEYS if k in data}
    if not flat:
        return dict(data)
    plan = data.get("plan") or {}
    if not isinstance(plan, Mapping):
        return dict(data)  # the loader reports the bad section
    both = sorted(set(flat) & set(plan))
    if both:
        raise ValueError(f"{where}: {both} given both at the top level and under plan; keep the plan: entries")
    rest = {k: v for k, v in data.items() if k not in flat}
    return rest | {"plan": {**plan, **flat}}


PRESETS: dict[str, dict[str, Any]] = {
    # Z-Image-Turbo on a GPU: 64-token (1024 px) windows, 8-token strips, 8 steps, no CFG, bf16 transformer.
    "z-image-turbo": {},
    # The built-in default model (zwsi-small, patch 4) on CPU: 16-token (512 px) windows with 2-token strips, decoded
    # in 16-latent (128 px) tiles = the small VAE's training crop, so its GroupNorm statistics match.
    "zwsi-small": dict(plan=dict(window_tokens=16, context_tokens=2, overview_margin=2), batch_size=8, vae_tile=16,
                       vae_overlap=2, dtype="fp32", glass_cleanup=True),
    # The tiny random pipeline on CPU (tests, benchmarks): 4-token (64 px) windows, fp32.
    "tiny": dict(plan=dict(window_tokens=4, context_tokens=1, overview_margin=1), batch_size=4, vae_tile=32,
                 vae_overlap=8, dtype="fp32"),
}


def load_generate_config(path: str | Path, *, base: GenerateConfig | None = None) -> GenerateConfig:
    """Read a YAML generation config (``preset: NAME`` picks the base; other keys override it).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, unknown keys, wrong types or bad values (the file is named).
    """
    data = read_yaml(path, "generate config")
    preset = data.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str):
            raise ValueError(f"{path}: preset must be a string, got {preset!r}")
        base = GenerateConfig.preset(preset)
    return GenerateConfig.from_dict(data, base=base, where=str(path))
