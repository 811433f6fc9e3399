"""The training configuration: YAML validated into dataclasses, an unknown key is an error that names it.

A config is one YAML file (``configs/train/<name>.yaml``) with the sections below; every key has a default, so a
config only states what differs. It is read by the project's one config loader (`zwsi.typed_config`: an unknown key
or a value of the wrong type is an error naming the key and the file); `load_train_config` also rejects any key
asking for a prompt enhancer (the report conditions the model verbatim, DESIGN §5).

    cfg = load_train_config("configs/train/tiny-cpu.yaml", overrides={"budget": {"max_steps": 50}})
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zwsi.typed_config import from_mapping, merge, read_yaml

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3")
LORA_BLOCKS = ("layers", "noise_refiner", "context_refiner")
FREEZE_GROUPS: dict[str, tuple[str, ...]] = {
    "report": ("cap_embedder", "context_refiner"),
    "image": ("all_x_embedder", "noise_refiner", "all_final_layer"),
}
POLICIES = ("full", "lora")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "cosine")
TIMESTEP_METHODS = ("uniform", "logit-normal")


@dataclass
class ModelConfig:
    """Where the transformer comes from.

    Attributes:
        path: a Z-Image hub folder, a ``transformer/`` folder or a ``.safetensors`` file (`load_transformer`).
        preset: an `S3DiTConfig` preset built with random weights when `path` is empty (e.g. "tiny").
        overrides: config fields changed on the preset (e.g. ``cap_feat_dim`` to match the text encoder).
        dtype: dtype of the weights as loaded ("fp32" or "bf16"); trainable LoRA weights stay fp32.
        attention_backend: `zwsi.model.attention` backend (None: the device default).
        gradient_checkpointing: recompute block activations in the backward pass.
    """

    path: str | None = None
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    dtype: str = "fp32"
    attention_backend: str | None = None
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        if (self.path is None) == (self.preset is None):
            raise ValueError(f"model: give exactly one of path or preset, got path={self.path!r}, preset={self.preset!r}")
        if self.path is not None and self.overrides:
            raise ValueError("model.overrides apply to a preset only; a checkpoint's config.json fixes its shape")
        if self.dtype not in PRECISIONS:
            raise ValueError(f"model.dtype = {self.dtype!r}; expected one of {list(PRECISIONS)}")


@dataclass
class LoraSettings:
    """LoRA adapters (peft): rank, alpha, dropout, target projections and the block stacks they go into."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    blocks: list[str] = field(default_factory=lambda: list(LORA_BLOCKS))

    def validate(self) -> None:
        _finite("control.lora", self, ("alpha", "dropout"))
        if self.alpha <= 0:
            raise ValueError(f"control.lora.alpha must be > 0, got {self.alpha}")
        if self.rank < 1:
            raise ValueError(f"control.lora.rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"control.lora.dropout must be in [0, 1), got {self.dropout}")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ValueError(f"control.lora.targets {bad or '[]'} invalid; choose from {list(LORA_TARGETS)}")
        bad = [b for b in self.blocks if b not in LORA_BLOCKS]
        if bad or not self.blocks:
            raise ValueError(f"control.lora.blocks {bad or '[]'} invalid; choose from {list(LORA_BLOCKS)}")


@dataclass
class ControlConfig:
    """What trains: the policy (``full`` or ``lora``) and parameter groups frozen (``report``, ``image``)."""

    policy: str = "lora"
    freeze: list[str] = field(default_factory=list)
    lora: LoraSettings = field(default_factory=LoraSettings)

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"control.policy = {self.policy!r}; expected one of {list(POLICIES)}")
        bad = [g for g in self.freeze if g not in FREEZE_GROUPS]
        if bad:
            raise ValueError(f"control.freeze {bad} unknown; groups are {dict(FREEZE_GROUPS)}")
        self.lora.validate()


@dataclass
class DataConfig:
    """Training samples (DESIGN §3): which windows, which context pattern, what is dropped.

    Attributes:
        dataset: the folder written by ``zwsi prepare`` (the CLI's --dataset overrides it).
        split: the split trained on.
        batch_size: windows per process per micro-step.
        grad_accum: micro-steps per optimiser step.
        phase_weights: relative frequency of the context patterns of phases A, B, C, D.
        level_weights: relative frequency of each level, finest first (None: uniform over levels with tissue).
        report_drop: probability that the report is dropped (empty report: classifier-free guidance).
        overview_drop: probability that the parent overview is dropped (layout / unconditional generation).
        subtype_balance: slides are drawn with weight count(subtype) ** -subtype_balance (0: uniform; 1: every
            subtype equally often, so rare subtypes are seen).
    """

    dataset: str | None = None
    split: str = "train"
    batch_size: int = 4
    grad_accum: int = 1
    phase_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0, 1.0])
    level_weights: list[float] | None = None
    report_drop: float = 0.1
    overview_drop: float = 0.1
    subtype_balance: float = 1.0

    def validate(self) -> None:
        _finite("data", self, ("phase_weights", "level_weights", "report_drop", "overview_drop", "subtype_balance"))
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"data.batch_size and data.grad_accum must be >= 1, got {self.batch_size}, {self.grad_accum}")
        if len(self.phase_weights) != 4 or min(self.phase_weights) < 0 or sum(self.phase_weights) <= 0:
            raise ValueError(f"data.phase_weights must be 4 non-negative weights (A, B, C, D), got {self.phase_weights}")
        if self.level_weights is not None and (min(self.level_weights) < 0 or sum(self.level_weights) <= 0):
            raise ValueError(f"data.level_weights must be non-negative with a positive sum, got {self.level_weights}")
        for name in ("report_drop", "overview_drop"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.subtype_balance < 0:
            raise ValueError(f"data.subtype_balance must be >= 0, got {self.subtype_balance}")


@dataclass
class ObjectiveConfig:
    """Flow matching in Z-Image's convention (`zwsi.flow`): how training noise levels are drawn and what the model
    predicts. The exported model carries these (``scheduler/scheduler_config.json``), so it samples with the shift it
    was trained with.

    Attributes:
        timesteps: "logit-normal" (SD3) or "uniform" sigmas.
        shift: time shift of the drawn sigmas, the same shift the sampler uses (Turbo: 3.0).
        loc, scale: the logit-normal's mean and standard deviation.
        prediction: "velocity" (x0 - eps, Z-Image) or "sample" (x0, JiT; `zwsi.flow.as_velocity`), trained with
            the velocity loss either way.
    """

    timesteps: str = "logit-normal"
    shift: float = 1.0
    loc: float = 0.0
    scale: float = 1.0
    prediction: str = "velocity"

    def validate(self) -> None:
        from zwsi.flow import PREDICTIONS

        _finite("objective", self, ("shift", "loc", "scale"))
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"objective.prediction = {self.prediction!r}; expected one of {list(PREDICTIONS)}")
        if self.timesteps not in TIMESTEP_METHODS:
            raise ValueError(f"objective.timesteps = {self.timesteps!r}; expected one of {list(TIMESTEP_METHODS)}")
        if self.shift <= 0 or self.scale <= 0:
            raise ValueError(f"objective.shift and objective.scale must be > 0, got {self.shift}, {self.scale}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up, then constant or cosine decay; gradient clipping by global norm (0: off)."""

    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0

    def validate(self) -> None:
        _finite("optim", self, ("lr", "eps", "weight_decay", "min_lr_ratio", "grad_clip"))
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.eps <= 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.eps must be > 0, weight_decay >= 0 and min_lr_ratio in [0, 1], got "
                             f"{self.eps}, {self.weight_decay}, {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule = {self.schedule!r}; expected one of {list(SCHEDULES)}")
        if self.warmup_steps < 0 or self.grad_clip < 0:
            raise ValueError(f"optim.warmup_steps and optim.grad_clip must be >= 0, got {self.warmup_steps}, {self.grad_clip}")


@dataclass
class EmaConfig:
    """Exponential moving average of the trainable weights (saved with checkpoints; used for samples and exports).

    Attributes:
        enabled: keep an EMA.
        decay: the EMA decay.
        start_step: the first step whose weights enter the EMA.
        warmup: use decay min(decay, (1 + k) / (10 + k)) at step k, so early steps are not averaged away.
    """

    enabled: bool = True
    decay: float = 0.999
    start_step: int = 0
    warmup: bool = False

    def validate(self) -> None:
        _finite("ema", self, ("decay",))
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}")


@dataclass
class BudgetConfig:
    """When the run stops: after max_steps optimiser steps, or once max_tokens sequence tokens were processed."""

    max_steps: int | None = 100
    max_tokens: int | None = None

    def validate(self) -> None:
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("budget: give max_steps or max_tokens (or both)")
        if (self.max_steps is not None and self.max_steps < 0) or (self.max_tokens is not None and self.max_tokens < 1):
            raise ValueError(f"budget values must be positive, got {self.max_steps}, {self.max_tokens}")


@dataclass
class CheckpointConfig:
    """Checkpoints every `every` steps (0: only at the end), the newest `keep` kept."""

    every: int = 100
    keep: int = 2

    def validate(self) -> None:
        if self.every < 0 or self.keep < 1:
            raise ValueError(f"checkpoint.every must be >= 0 and checkpoint.keep >= 1, got {self.every}, {self.keep}")


@dataclass
class HealthConfig:
    """A non-finite loss or gradient skips the step; this many in a row stop the run."""

    max_consecutive_nonfinite: int = 5

    def validate(self) -> None:
        if self.max_consecutive_nonfinite < 1:
            raise ValueError(f"health.max_consecutive_nonfinite must be >= 1, got {self.max_consecutive_nonfinite}")


@dataclass
class LogConfig:
    """Metrics to ``metrics.jsonl`` every `every` steps (and TensorBoard when installed and enabled)."""

    every: int = 1
    tensorboard: bool = True
    progress: bool = True


@dataclass
class ValidationConfig:
    """Held-out loss every `every` steps (0: off) at fixed noise levels, and sample windows written as PNG."""

    split: str = "val"
    every: int = 100
    batches: int = 2
    batch_size: int = 4
    sigmas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    sample_windows: int = 2
    sample_steps: int = 8
    sample_shift: float | None = None  # None: objective.shift, the shift the model was trained with

    def validate(self) -> None:
        _finite("validation", self, ("sigmas", "sample_shift"))
        if self.sample_shift is not None and self.sample_shift <= 0:
            raise ValueError(f"validation.sample_shift must be > 0, got {self.sample_shift}")
        if self.every < 0 or self.batches < 1 or self.batch_size < 1 or self.sample_windows < 0 or self.sample_steps < 1:
            raise ValueError("validation: every >= 0, batches >= 1, batch_size >= 1, sample_windows >= 0, sample_steps >= 1")
        if not self.sigmas or not all(0 < s <= 1 for s in self.sigmas):
            raise ValueError(f"validation.sigmas must be noise levels in (0, 1], got {self.sigmas}")


@dataclass
class DistributedConfig:
    """Multi-process settings (the launch itself comes from ``accelerate launch --config_file configs/accelerate/...``)."""

    find_unused_parameters: bool = True


@dataclass
class TrainConfig:
    """The whole training configuration (one YAML file)."""

    name: str = "run"
    seed: int = 0
    out: str | None = None
    precision: str = "fp32"
    model: ModelConfig = field(default_factory=ModelConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    log: LogConfig = field(default_factory=LogConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> TrainConfig:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision = {self.precision!r}; expected one of {list(PRECISIONS)}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """SHA-256 of the config's canonical JSON (recorded with checkpoints)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _finite(section: str, obj: Any, names: tuple[str, ...]) -> None:
    """Raise naming `section.name` when a number (or a number in a list) is NaN or infinite (YAML's .inf, .nan)."""
    for name in names:
        value = getattr(obj, name)
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise ValueError(f"{section}.{name} must be a finite number, got {value!r}")


def from_dict(data: dict[str, Any], overrides: dict[str, Any] | None = None, where: str = "config") -> TrainConfig:
    """Build and validate a `TrainConfig` from a nested mapping (plus nested `overrides`), with `zwsi.typed_config`.

    Raises:
        ValueError: a prompt-enhancer key (says why it is disabled), an unknown key (its dotted path and the valid
            keys), a value of the wrong type, or a value out of range.
    """
    from reports.conditioning import reject_prompt_enhancer

    merged = merge(data or {}, overrides or {})
    reject_prompt_enhancer(merged, where=where)
    return from_mapping(TrainConfig, merged, where=where).validate()


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML training config (see `from_dict`)."""
    return from_dict(read_yaml(path, "training config"), overrides, where=str(path))
