"""What trains: the starting model, the policy (full or LoRA), frozen groups, and LoRA adapters saved alone and merged.

Policies:

* ``full``: every parameter trains, except the frozen groups;
* ``lora``: peft LoRA adapters (``inject_adapter_in_model``) on the attention (to_q, to_k, to_v, to_out.0) and
  feed-forward (w1, w2, w3) projections of the chosen block stacks; the base stays frozen. Blocks of a frozen
  group get no adapter.

Groups (``control.freeze``): ``report`` = cap_embedder + context_refiner; ``image`` = all_x_embedder +
noise_refiner + all_final_layer.

An adapter is saved alone as ``adapter_model.safetensors`` + ``adapter_config.json`` (peft's names and format) and
merged into a full checkpoint by `merge_lora` (``zwsi train merge-lora``): W <- W + (alpha / r) B A.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from torch import nn

from zwsi.model import S3DiT, S3DiTConfig
from zwsi.train.config import FREEZE_GROUPS, ControlConfig, ModelConfig

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def build_model(config: ModelConfig, *, seed: int = 0, initialize: bool = True) -> S3DiT:
    """The starting transformer: a checkpoint (`load_transformer`) or a preset with seeded random weights.

    A preset trained from scratch starts from DiT's initialisation (`S3DiT.initialize_weights`, adaLN-Zero);
    ``initialize=False`` keeps PyTorch's default draws instead, a stand-in for pretrained weights when LoRA
    adapters are trained on a preset (under adaLN-Zero every adapted projection would start gated off).
    """
    from zwsi.dtypes import resolve_dtype
    from zwsi.model.checkpoint import load_transformer

    dtype = resolve_dtype(config.dtype)
    if config.path is not None:
        model = load_transformer(config.path, dtype=dtype)
        model.attention_backend = config.attention_backend
    else:
        from zwsi.model.config import PRESETS

        if config.preset not in PRESETS:
            raise ValueError(f"model.preset {config.preset!r} unknown; expected one of {sorted(PRESETS)}")
        cfg = S3DiTConfig.from_dict({**PRESETS[config.preset], **config.overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = S3DiT(cfg, attention_backend=config.attention_backend)
            if initialize:  # DiT's adaLN-Zero start; a checkpoint (above) is never re-initialised
                model.initialize_weights()
            model = model.to(dtype)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing(True)
    return model


def group_of(name: str) -> str | None:
    """The freeze group of a parameter or module name, or None."""
    root = name.split(".", 1)[0]
    return next((g for g, roots in FREEZE_GROUPS.items() if root in roots), None)


def lora_target_regex(control: ControlConfig) -> str:
    """peft `target_modules` regex (full match) of the projections that get adapters."""
    blocks = [b for b in control.lora.blocks if group_of(b) not in control.freeze]
    if not blocks:
        raise ValueError(f"control.lora.blocks {control.lora.blocks} are all frozen by control.freeze {control.freeze}")
    attn = [t for t in control.lora.targets if t.startswith("to_")]
    ffn = [t for t in control.lora.targets if t.startswith("w")]
    parts = []
    if attn:
        parts.append(r"attention\.(" + "|".join(re.escape(t) for t in attn) + ")")
    if ffn:
        parts.append(r"feed_forward\.(" + "|".join(ffn) + ")")
    return r"^(" + "|".join(blocks) + r")\.\d+\.(" + "|".join(parts) + ")$"


def apply_control(model: nn.Module, control: ControlConfig, *, seed: int = 0) -> nn.Module:
    """Set what trains (in place, returns the model): the policy, then the frozen groups.

    LoRA's A matrices are drawn from a generator seeded with `seed` (B starts at zero), so a run is reproducible.

    Returns:
        The model (LoRA layers injected for ``lora``); `zwsi.train.core.trainable_summary` counts what trains.
    """
    if control.policy == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lcfg = LoraConfig(r=control.lora.rank, lora_alpha=control.lora.alpha,  # type: ignore[arg-type]  # any number
                          lora_dropout=control.lora.dropout, target_modules=lora_target_regex(control), bias="none")
        model.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = inject_adapter_in_model(lcfg, model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
            if "lora_" in name and p.dtype != torch.float32:
                p.data = p.data.float()  # adapters train in fp32 over a bf16 base
        model.lora_config = lcfg  # type: ignore[assignment]
    else:
        model.requires_grad_(True)
    for name, p in model.named_parameters():
        if group_of(name) in control.freeze:
            p.requires_grad_(False)
    return model


# ---- adapters alone ------------------------------------------------------------------------------------------------
def save_adapter(model: nn.Module, folder: str | Path, *, state_dict: dict[str, torch.Tensor] | None = None,
                 base: str | None = None) -> Path:
    """Write the LoRA adapter alone: ``adapter_model.safetensors`` + ``adapter_config.json`` (peft format).

    Args:
        model: a model with injected LoRA layers (`apply_control` with policy ``lora``).
        folder: output folder (files written under temporary names, then renamed).
        state_dict: the adapter tensors to write instead of the model's own (e.g. EMA weights).
        base: the base model recorded as ``base_model_name_or_path``.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    lcfg = getattr(model, "lora_config", None)
    if lcfg is None:
        raise ValueError("the model has no LoRA adapter (control.policy is not 'lora')")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = state_dict if state_dict is not None else get_peft_model_state_dict(model)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}
    tmp = folder / f".{ADAPTER_WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / ADAPTER_WEIGHTS)
    config = lcfg.to_dict()
    config["base_model_name_or_path"] = base
    config = json.loads(json.dumps(config, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    tmp = folder / f".{ADAPTER_CONFIG}.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, folder / ADAPTER_CONFIG)
    return folder


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors under peft's saved names (adapter name removed)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Inject the adapter of `folder` into `model` and load its weights (every adapter tensor must be used).

    Raises:
        FileNotFoundError: the folder lacks the adapter files.
        ValueError: adapter tensors that do not fit the model.
    """
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}; expected a LoRA adapter saved by zwsi train")
    lcfg = LoraConfig.from_pretrained(str(folder))
    model = inject_adapter_in_model(lcfg, model)
    weights = load_file(folder / ADAPTER_WEIGHTS)
    result = set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ValueError(f"adapter tensors not in the model: {unexpected[:10]}")
    model.lora_config = lcfg
    return model


def merge_lora_(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer into its base weight and put the plain base layer back (in place)."""
    from peft.tuners.lora import LoraLayer

    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
            replaced += 1
    if hasattr(model, "lora_config"):
        del model.lora_config
    logger.info("merged %d LoRA layers", replaced)
    return model


def merge_lora(base: str | Path, adapter: str | Path, out: str | Path, *, dtype: str = "fp32") -> Path:
    """Merge an adapter into a base checkpoint and save the full transformer (hub layout, `save_pretrained`).

    Args:
        base: the base checkpoint (anything `load_transformer` reads).
        adapter: the adapter folder.
        out: the output transformer folder.
        dtype: dtype of the merge and of the written weights.
    """
    from zwsi.model.checkpoint import load_transformer, save_pretrained

    model: nn.Module = load_transformer(base, dtype=dtype)
    model = load_adapter(model, adapter)
    model = merge_lora_(model)
    return save_pretrained(model, out)
