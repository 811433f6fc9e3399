"""Training state: EMA weights and checkpoints in safetensors + JSON (no pickle), resumed exactly.

A checkpoint folder (``OUT/checkpoints/step-0000100/``, the same layout for the S3-DiT and the VAE trainer) holds:

| file                                   | what                                                             |
|----------------------------------------|------------------------------------------------------------------|
| ``adapter/``, ``transformer/``, ``vae/`` | the trainer's model: a LoRA adapter alone (peft format), or the full model (hub layout) |
| ``optimizer.safetensors`` + ``.json``  | AdamW state tensors by parameter name; param groups and scalars   |
| ``scheduler.json``                     | the LR scheduler's state                                          |
| ``ema.safetensors``                    | EMA of the trainable weights (when enabled)                       |
| ``rng-rank<r>.safetensors`` + ``.json``| torch CPU/CUDA generator states; Python and NumPy states, per rank |
| ``state.json``                         | step, tokens, health counters, elapsed time, the config (and the trainer's own entries) |

It is written into a temporary folder and renamed, so a crash never leaves a half checkpoint under the final
name. Model and optimizer state dicts are gathered with `torch.distributed.checkpoint.state_dict` (full, on the
CPU), so the same code serves one process, DDP and FSDP.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

STATE_NAME = "state.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"step-(\d+)")


class EMA:
    """Exponential moving average of named parameters, kept in fp32: shadow <- decay * shadow + (1 - decay) * p.

    Args:
        params: name -> parameter (the trainable ones).
        decay: the EMA decay.
        warmup: at step k use min(decay, (1 + k) / (10 + k)), so the first steps are not averaged away.
    """

    def __init__(self, params: dict[str, torch.Tensor], decay: float, *, warmup: bool = False) -> None:
        self.decay = float(decay)
        self.warmup = warmup
        self.shadow = {n: p.detach().float().clone() for n, p in params.items()}

    def decay_at(self, step: int) -> float:
        """The decay used at optimiser step ``step`` (0-based)."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, params: dict[str, torch.Tensor], step: int = 0) -> None:
        weight = 1.0 - self.decay_at(step)
        for n, p in params.items():
            self.shadow[n].lerp_(p.detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: t.contiguous() for n, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        extra = sorted(set(state) - set(self.shadow))
        if missing or extra:
            raise ValueError(f"EMA state does not fit the trainable parameters: missing {missing[:5]}, extra {extra[:5]}")
        for n, t in state.items():
            self.shadow[n].copy_(t)

    @contextmanager
    def applied(self, params: dict[str, torch.Tensor]) -> Iterator[None]:
        """Swap the EMA weights into the parameters for the block, then restore them."""
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])


# ---- flattening state dicts into safetensors + JSON ------------------------------------------------------------
def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict (keyed by parameter name) into tensors and a JSON-ready rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pname, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pname}\x1f{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pname), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars, "format": "zwsi-optimizer-1"}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer_state`."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        pname, name = key.split("\x1f", 1)
        state.setdefault(pname, {})[name] = value
    for pname, values in meta.get("scalars", {}).items():
        state.setdefault(pname, {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's generator states: torch (CPU, CUDA) as tensors; Python and NumPy as JSON."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    py = random.getstate()
    np_state: Any = np.random.get_state()  # the legacy tuple
    meta = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---- writing / reading a checkpoint ---------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under `folder` (those with state.json), oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_PATTERN.fullmatch(p.name) and (p / STATE_NAME).is_file()]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.fullmatch(p.name).group(1)))  # type: ignore[union-attr]


def resolve_resume(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its newest checkpoint).

    Raises:
        FileNotFoundError: no complete checkpoint there (checkpoints of the VAE trainer before the training core,
            ``step_NNNNNNN``, are named as such: they cannot be resumed).
    """
    path = Path(path)
    if (path / STATE_NAME).is_file():
        return path
    found = list_checkpoints(path / CHECKPOINTS_DIR) or list_checkpoints(path)
    if not found:
        legacy = sorted((path / CHECKPOINTS_DIR).glob("step_*")) if (path / CHECKPOINTS_DIR).is_dir() else []
        if legacy:
            raise FileNotFoundError(f"--resume {path}: {legacy[-1].name} is a checkpoint of an earlier zwsi "
                                    f"train-vae (before the training core) and cannot be resumed; start a new run")
        raise FileNotFoundError(f"--resume {path}: no checkpoint (a folder with {STATE_NAME}) in it or its "
                                f"{CHECKPOINTS_DIR}/")
    return found[-1]


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint folder belongs to (``RUN/checkpoints/step-N`` -> ``RUN``)."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else parent


def save_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_checkpoint(
    folder: Path,
    *,
    is_main: bool,
    rank: int,
    model_files: Any,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    ema_state: dict[str, torch.Tensor] | None,
    state: dict[str, Any],
    barrier: Any,
) -> Path:
    """Write a checkpoint (see the module docstring); every rank calls it (each writes its RNG state).

    Args:
        folder: the final checkpoint folder.
        model_files: callable writing the model (adapter or transformer) into a folder, called on the main rank.
        optimizer_state: the full optimizer state dict keyed by parameter name.
        barrier: callable synchronising the processes.
    """
    from safetensors.torch import save_file

    tmp = folder.with_name(f".{folder.name}.tmp")
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    tensors, meta = rng_state()
    save_file(tensors, str(tmp / f"rng-rank{rank}.safetensors"))
    save_json(tmp / f"rng-rank{rank}.json", meta)
    if is_main:
        model_files(tmp)
        opt_tensors, opt_meta = flatten_optimizer_state(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_json(tmp / "optimizer.json", opt_meta)
        save_json(tmp / "scheduler.json", _jsonable(scheduler_state))
        if ema_state is not None:
            save_file({k: v.contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
    barrier()
    if is_main:
        save_json(tmp / STATE_NAME, state)  # written last: its presence marks a complete checkpoint
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    barrier()
    return folder


def prune_checkpoints(folder: Path, keep: int) -> None:
    """Remove all but the newest `keep` checkpoints."""
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old)


def read_checkpoint(folder: Path, rank: int) -> dict[str, Any]:
    """Everything of a checkpoint except the model: optimizer, scheduler, EMA, RNG of `rank`, state."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {"state": json.loads((folder / STATE_NAME).read_text())}
    out["optimizer"] = unflatten_optimizer_state(load_file(folder / "optimizer.safetensors"),
                                                 json.loads((folder / "optimizer.json").read_text()))
    out["scheduler"] = json.loads((folder / "scheduler.json").read_text())
    out["ema"] = load_file(folder / "ema.safetensors") if (folder / "ema.safetensors").is_file() else None
    rng = folder / f"rng-rank{rank}.safetensors"
    out["rng"] = (load_file(rng), json.loads((folder / f"rng-rank{rank}.json").read_text())) if rng.is_file() else None
    return out


def read_transformer_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a hub-layout transformer folder (one file or shards)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("diffusion_pytorch_model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no diffusion_pytorch_model*.safetensors in {folder}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(f))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return obj
    return None  # callables (lr lambdas) are rebuilt from the config


def trainable_named(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> parameter of the trainable parameters of an unwrapped model."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
