"""Checkpoint IO for the S3-DiT: the hub / diffusers folder layout, single safetensors files and ComfyUI single files.

Layouts read by `load_transformer` (zimage-architecture.md §2, §6):

| layout                | what `path` names                                                                   |
|-----------------------|-------------------------------------------------------------------------------------|
| hub `transformer/`    | a folder with `config.json` and `diffusion_pytorch_model.safetensors` or the shards |
|                       | `diffusion_pytorch_model-0000i-of-0000n.safetensors` + `...safetensors.index.json`  |
| whole pipeline        | a folder holding `transformer/` (and `vae/`, `text_encoder/`, ...)                  |
| single file           | one `.safetensors` (diffusers names, or the ComfyUI names: fused qkv, `x_embedder`)  |
| third-party pickle    | `.pth/.pt/.bin/.ckpt`: refused unless `allow_pickle_weights_only=True`              |

The model is built with its parameters on the meta device and every checkpoint tensor is read (memory-mapped), cast,
moved and assigned one at a time, shard by shard, so the weights exist once in memory. Key names and shapes are
checked against the model from the safetensors headers alone, before any weight is read.

`save_pretrained` writes the hub layout that diffusers' `ZImageTransformer2DModel.from_pretrained` reads.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from zwsi.dtypes import resolve_dtype
from zwsi.model.config import S3DiTConfig

if TYPE_CHECKING:
    from zwsi.model.s3dit import S3DiT

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
SHARD_PATTERN = "diffusion_pytorch_model{suffix}.safetensors"  # huggingface_hub fills in -00001-of-00003
PIPELINE_SUBFOLDER = "transformer"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
COMFYUI_PREFIX = "model.diffusion_model."
CLASS_NAMES = ("ZImageTransformer2DModel", "S3DiT")  # accepted `_class_name` values in config.json
_OWN_FILE = re.compile(r"diffusion_pytorch_model(-\d+-of-\d+)?\.safetensors(\.index\.json)?")  # what a save writes

PathLike = str | os.PathLike[str]
Shape = tuple[int, ...]
_T = TypeVar("_T")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as an S3-DiT (bad file, bad layout, refused format)."""


class StateDictMismatchError(CheckpointError):
    """The checkpoint's keys or shapes differ from the model's.

    Attributes:
        missing: keys the model has and the checkpoint lacks.
        unexpected: keys the checkpoint has and the model lacks.
        mismatched: `key -> (checkpoint shape, model shape)` for keys in both with different shapes.
    """

    def __init__(
        self, message: str, missing: list[str], unexpected: list[str], mismatched: dict[str, tuple[Shape, Shape]]
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


# ---------------------------------------------------------------------------------------------- public API


def load_transformer(
    path: PathLike,
    dtype: torch.dtype | str = torch.bfloat16,
    device: torch.device | str = "cpu",
    *,
    config: S3DiTConfig | str | None = None,
    allow_pickle_weights_only: bool = False,
) -> S3DiT:
    """Load an S3-DiT from a hub folder, a pipeline folder, a `.safetensors` file or a ComfyUI single file.

    The config is, in this order: `config.json` beside the weights; else `config` (an `S3DiTConfig` or a preset
    name); else inferred from the tensor shapes (the RoPE split, theta, t_scale and eps are not stored in weights, so
    Z-Image's values are assumed; a warning says so). The log says which was used. When both `config.json` and
    `config` are present they must agree.

    Args:
        path: the checkpoint (see the module docstring for the layouts).
        dtype: parameter dtype, `torch.float32/bfloat16/float16` or "fp32"/"bf16"/"fp16"; every tensor is cast.
        device: where the parameters are placed (each tensor is moved as it is read).
        config: config for a checkpoint without `config.json`: an `S3DiTConfig` or a preset name.
        allow_pickle_weights_only: read a pickle checkpoint (.pth/.pt/.bin/.ckpt) with
            `torch.load(weights_only=True)`, which refuses arbitrary objects. Off by default.

    Returns:
        The model in eval mode, parameters on `device` in `dtype` (requires_grad as built).

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: unreadable/corrupt file (named), refused pickle file, no weights found, bad index.
        StateDictMismatchError: missing / unexpected keys or shape mismatches (all listed).
        ValueError: bad dtype, unknown preset, invalid or conflicting config.
    """
    torch_dtype = resolve_dtype(dtype)
    source = _open_source(Path(path), allow_pickle_weights_only)
    cfg, how = _resolve_config(source, config)
    logger.info("S3DiT config for %s: %s", source.description, how)
    model = _build_on_meta(cfg)
    _check_keys(_expected_shapes(model), source.shapes(), f"{source.description} (config {how})")
    _assign_weights(model, source, torch_dtype, torch.device(device))
    return model.eval()


def save_pretrained(model: nn.Module, directory: PathLike, *, max_shard_size: int | str = "10GB") -> Path:
    """Write `model` in the hub `transformer/` layout: config.json + safetensors (sharded with an index if large).

    The result loads with `load_transformer(directory)` and with diffusers'
    `ZImageTransformer2DModel.from_pretrained(directory)`. Every file is written under a temporary name and renamed
    into place; shards of an earlier save in the same folder that the new index does not name are then removed.

    Args:
        model: an `S3DiT` (or any module with the same parameter names whose `.config` is an `S3DiTConfig` or a
            config.json-style mapping, e.g. diffusers' `ZImageTransformer2DModel`).
        directory: the output folder (created if needed).
        max_shard_size: the largest shard, in bytes or as "5GB" / "500MB"; one file and no index if all fits.

    Returns:
        `directory` as a Path.
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg = _config_of(model)
    directory.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict()
    split = split_torch_state_dict_into_shards(state_dict, filename_pattern=SHARD_PATTERN, max_shard_size=max_shard_size)
    written: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for filename, keys in split.filename_to_tensors.items():
            final = directory / filename
            tmp = directory / f".{filename}.tmp"
            shard = {k: state_dict[k].detach().to("cpu").contiguous() for k in keys}
            save_file(shard, str(tmp), metadata={"format": "pt"})
            written.append((tmp, final))
        if split.is_sharded:
            index = {"metadata": {**split.metadata}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
            tmp = directory / f".{WEIGHTS_INDEX_NAME}.tmp"
            tmp.write_text(json.dumps(index, indent=2) + "\n")
            written.append((tmp, directory / WEIGHTS_INDEX_NAME))
    except BaseException:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in written:
        os.replace(tmp, final)
    cfg.to_json(directory / CONFIG_NAME)
    keep = {final.name for _, final in written}
    stale = [p for p in directory.iterdir() if _OWN_FILE.fullmatch(p.name) and p.name not in keep]
    for p in stale:  # an older save's shards or index would contradict the new files
        p.unlink()
    logger.info("saved S3DiT to %s: %d weight file(s)%s", directory, len(split.filename_to_tensors),
                " + index" if split.is_sharded else "")
    return directory


def convert_comfyui_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ComfyUI / single-file Z-Image state dict to the hub (diffusers) names.

    Strips `model.diffusion_model.`, maps `x_embedder.` -> `all_x_embedder.2-1.`, `final_layer.` ->
    `all_final_layer.2-1.`, splits `.attention.qkv.weight` into `to_q/to_k/to_v` (equal thirds of dim 0),
    `.attention.out.` -> `.attention.to_out.0.`, `q_norm/k_norm` -> `norm_q/norm_k`, and drops `norm_final.weight`
    (zimage-architecture.md §2; the same mapping as diffusers' single-file converter). Keys already in hub naming
    pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        for new_key, value in _comfyui_entries(key, tensor, _split_tensor):
            out[new_key] = value
    return out


def infer_config(shapes: Mapping[str, Sequence[int]]) -> tuple[S3DiTConfig, list[str]]:
    """Infer an `S3DiTConfig` from hub-named tensor shapes.

    Read from shapes: dim and in_channels/patch (from `all_x_embedder.<p>-<f>.weight`), n_layers, n_refiner_layers,
    n_heads (dim / size of `norm_q`), qk_norm, cap_feat_dim. Not stored in weights and assumed from Z-Image:
    axes_dims (Z-Image's 1/4, 3/8, 3/8 split of head_dim), axes_lens, rope_theta, t_scale, norm_eps.

    Returns:
        The config and the names of the fields that were assumed rather than read.

    Raises:
        CheckpointError: when a needed tensor is absent or a size does not fit (names it).
    """
    embedders = sorted(k for k in shapes if re.fullmatch(r"all_x_embedder\.\d+-\d+\.weight", k))
    if not embedders:
        raise CheckpointError("cannot infer the config: no all_x_embedder.<p>-<f>.weight tensor; pass config=")
    patches = [tuple(int(v) for v in k.split(".")[1].split("-")) for k in embedders]
    dim, patch_dim = (int(v) for v in shapes[embedders[0]])
    p, f = patches[0]
    if patch_dim % (f * p * p):
        raise CheckpointError(f"cannot infer in_channels: {embedders[0]} has {patch_dim} inputs, not a multiple of "
                              f"f*p*p = {f * p * p}")
    norm_q = shapes.get("layers.0.attention.norm_q.weight")
    if norm_q is None:
        raise CheckpointError("cannot infer n_heads: no layers.0.attention.norm_q.weight (qk_norm off?); pass config=")
    head_dim = int(norm_q[0])
    if dim % head_dim or head_dim % 16:
        raise CheckpointError(f"cannot infer the heads/RoPE split from dim={dim}, head_dim={head_dim}; pass config=")
    if "cap_embedder.0.weight" not in shapes:
        raise CheckpointError("cannot infer cap_feat_dim: no cap_embedder.0.weight; pass config=")
    defaults = S3DiTConfig()
    cfg = S3DiTConfig(
        all_patch_size=tuple(pp for pp, _ in patches),
        all_f_patch_size=tuple(ff for _, ff in patches),
        in_channels=patch_dim // (f * p * p),
        dim=dim,
        n_layers=_count_blocks(shapes, "layers"),
        n_refiner_layers=_count_blocks(shapes, "noise_refiner"),
        n_heads=dim // head_dim,
        n_kv_heads=dim // head_dim,
        qk_norm=True,
        cap_feat_dim=int(shapes["cap_embedder.0.weight"][0]),
        axes_dims=(head_dim // 4, head_dim * 3 // 8, head_dim * 3 // 8),
        axes_lens=defaults.axes_lens,
        rope_theta=defaults.rope_theta,
        t_scale=defaults.t_scale,
        norm_eps=defaults.norm_eps,
    )
    return cfg, ["axes_dims", "axes_lens", "rope_theta", "t_scale", "norm_eps"]


# ---------------------------------------------------------------------------------------------- sources


@dataclass
class _Shard:
    """One weight file: its key -> shape map as stored, and a way to read its tensors one at a time."""

    path: Path
    raw_shapes: dict[str, Shape]
    read: Callable[[], Iterator[tuple[str, torch.Tensor]]]


@dataclass
class _Source:
    """A resolved checkpoint: its weight files, the config.json beside them (if any), and how to describe it."""

    description: str
    shards: list[_Shard]
    config_json: Path | None
    comfyui: bool  # stored with ComfyUI names; converted to hub names as read

    def entries(self, key: str, value: _T, split: Callable[[_T, str], tuple[_T, _T, _T]]) -> list[tuple[str, _T]]:
        """The hub-named entries for one stored entry."""
        return _comfyui_entries(key, value, split) if self.comfyui else [(key, value)]

    def shapes(self) -> dict[str, Shape]:
        """Hub-named key -> shape over all weight files (from the headers; no tensor is read)."""
        merged: dict[str, Shape] = {}
        for shard in self.shards:
            for raw_key, raw_shape in shard.raw_shapes.items():
                for key, shape in self.entries(raw_key, raw_shape, _split_shape):
                    if key in merged:
                        raise CheckpointError(f"{self.description}: tensor {key!r} is stored more than once")
                    merged[key] = shape
        return merged


def _open_source(path: Path, allow_pickle: bool) -> _Source:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    index: Path | None = None
    if path.is_dir():
        folder = path
        if not _weight_candidates(folder) and (folder / PIPELINE_SUBFOLDER).is_dir():
            folder = folder / PIPELINE_SUBFOLDER  # a whole pipeline: transformer/ beside vae/, text_encoder/, ...
        if (folder / WEIGHTS_INDEX_NAME).is_file():
            index = folder / WEIGHTS_INDEX_NAME
            files = _index_files(index)
        else:
            files = _weight_files_in(folder)
    elif path.name.endswith(".index.json"):
        index, folder = path, path.parent
        files = _index_files(index)
    else:
        folder, files = path.parent, [path]
    config_json = folder / CONFIG_NAME if (folder / CONFIG_NAME).is_file() else None
    shards: list[_Shard] = []
    for file in files:
        if file.suffix in PICKLE_SUFFIXES:
            shards.append(_pickle_shard(file, allow_pickle))
        elif file.suffix == ".safetensors":
            shards.append(_safetensors_shard(file))
        else:
            raise CheckpointError(f"{file}: unsupported weight file type {file.suffix!r}; expected .safetensors, "
                                  "a hub folder, or a *.safetensors.index.json")
    if index is not None:
        _check_index(index, shards)
    comfyui = any(_is_comfyui_key(k) for s in shards for k in s.raw_shapes)
    what = str(path) + (" (ComfyUI single-file layout)" if comfyui else "")
    return _Source(description=what, shards=shards, config_json=config_json, comfyui=comfyui)


def _weight_candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", *PICKLE_SUFFIXES))


def _weight_files_in(folder: Path) -> list[Path]:
    """The weights of a folder without an index: the hub file name, else its only weight file."""
    if (folder / WEIGHTS_NAME).is_file():
        return [folder / WEIGHTS_NAME]
    candidates = _weight_candidates(folder)
    safetensors = [p for p in candidates if p.suffix == ".safetensors"]
    if len(safetensors) > 1:
        raise CheckpointError(f"{folder} holds several .safetensors files {[p.name for p in safetensors]} but no "
                              f"{WEIGHTS_INDEX_NAME} saying which belong to the model; pass one file")
    if len(safetensors) == 1:
        return safetensors
    if len(candidates) == 1:
        return candidates  # one pickle file: refused or read in _pickle_shard
    contents = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(f"no transformer weights in {folder}: expected {WEIGHTS_NAME}, {WEIGHTS_INDEX_NAME} with "
                          f"its shards, or a {PIPELINE_SUBFOLDER}/ subfolder; found {contents}")


def _index_files(index_path: Path) -> list[Path]:
    weight_map = _read_index(index_path)
    files = sorted({index_path.parent / name for name in weight_map.values()})
    absent = [p.name for p in files if not p.is_file()]
    if absent:
        raise CheckpointError(f"{index_path} names weight files that are missing: {absent}")
    return files


def _read_index(index_path: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index_path} is not a safetensors index (expected JSON with a 'weight_map' object "
                              f"of tensor name -> file name): {exc!r}") from exc
    return weight_map


def _check_index(index_path: Path, shards: list[_Shard]) -> None:
    """Every tensor in the index is in the file it names, and every tensor of those files is in the index."""
    weight_map = _read_index(index_path)
    for shard in shards:
        listed = {k for k, name in weight_map.items() if name == shard.path.name}
        actual = set(shard.raw_shapes)
        if listed != actual:
            raise CheckpointError(
                f"{index_path} disagrees with {shard.path.name}: listed but absent {sorted(listed - actual)[:10]}, "
                f"present but not listed {sorted(actual - listed)[:10]}"
            )


def _safetensors_shard(file: Path) -> _Shard:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            raw = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError, which does not name the file
        raise CheckpointError(f"cannot read safetensors file {file}: {exc} (the file is truncated or corrupt; "
                              "download or convert it again)") from exc

    def read() -> Iterator[tuple[str, torch.Tensor]]:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in raw:
                    yield key, f.get_tensor(key)
        except Exception as exc:
            raise CheckpointError(f"cannot read tensors from safetensors file {file}: {exc}") from exc

    return _Shard(path=file, raw_shapes=raw, read=read)


def _pickle_shard(file: Path, allow_pickle: bool) -> _Shard:
    if not allow_pickle:
        raise CheckpointError(
            f"refusing to load the pickle checkpoint {file}: unpickling can execute arbitrary code. Convert it to "
            "safetensors (e.g. safetensors.torch.save_file(state_dict, 'model.safetensors') in a sandbox), or, for "
            "a trusted third-party file holding only tensors, pass allow_pickle_weights_only=True to read it with "
            "torch.load(weights_only=True)"
        )
    try:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {file} with torch.load(weights_only=True): {exc}") from exc
    state_dict = _unwrap_state_dict(obj, file)
    return _Shard(path=file, raw_shapes={k: tuple(v.shape) for k, v in state_dict.items()},
                  read=lambda: iter(list(state_dict.items())))


def _unwrap_state_dict(obj: Any, file: Path) -> dict[str, torch.Tensor]:
    """A bare state dict, or the usual wrappers {"state_dict": ...}, {"model": ...}, {"module": ...}, {"ema": ...}."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    if isinstance(obj, Mapping):
        for name in ("state_dict", "model", "module", "ema"):
            inner = obj.get(name)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                logger.info("%s: using the state dict under %r", file, name)
                return dict(inner)
    keys = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{file} holds no state dict of tensors (top level: {keys}); expected a name -> tensor "
                          "mapping or one under 'state_dict'/'model'/'module'/'ema'")


# ---------------------------------------------------------------------------------------------- ComfyUI names


def _is_comfyui_key(key: str) -> bool:
    return key.startswith((COMFYUI_PREFIX, "x_embedder.", "final_layer.")) or ".attention.qkv." in key


def _comfyui_entries(key: str, value: _T, split: Callable[[_T, str], tuple[_T, _T, _T]]) -> list[tuple[str, _T]]:
    """The hub-named entries for one ComfyUI-named entry (a tensor or a shape): 0, 1 or 3 of them."""
    k = key.removeprefix(COMFYUI_PREFIX)
    if k == "norm_final.weight":  # a parameter-free LayerNorm in the model; some exports carry a stray weight
        return []
    if k.startswith("x_embedder."):
        k = "all_x_embedder.2-1." + k.removeprefix("x_embedder.")
    elif k.startswith("final_layer."):
        k = "all_final_layer.2-1." + k.removeprefix("final_layer.")
    k = (k.replace(".attention.out.", ".attention.to_out.0.")
          .replace(".attention.q_norm.", ".attention.norm_q.")
          .replace(".attention.k_norm.", ".attention.norm_k."))
    if k.endswith(".attention.qkv.weight"):
        stem = k.removesuffix("qkv.weight")
        q, kk, v = split(value, key)
        return [(stem + "to_q.weight", q), (stem + "to_k.weight", kk), (stem + "to_v.weight", v)]
    return [(k, value)]


def _split_tensor(t: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _split_shape(tuple(t.shape), key)
    q, k, v = torch.chunk(t, 3, dim=0)
    return q, k, v


def _split_shape(shape: Shape, key: str) -> tuple[Shape, Shape, Shape]:
    if len(shape) != 2 or shape[0] % 3:
        raise CheckpointError(f"fused {key} has shape {list(shape)}; expected [3*dim, dim] to split into q, k, v")
    part = (shape[0] // 3, *shape[1:])
    return part, part, part


# ---------------------------------------------------------------------------------------------- config, model, keys


def _resolve_config(source: _Source, config: S3DiTConfig | str | None) -> tuple[S3DiTConfig, str]:
    given: S3DiTConfig | None = None
    if isinstance(config, str):
        given = S3DiTConfig.preset(config)
    elif isinstance(config, S3DiTConfig):
        given = config
    elif config is not None:
        raise ValueError(f"config={config!r}: expected an S3DiTConfig, a preset name, or None")
    if source.config_json is not None:
        try:
            raw = json.loads(source.config_json.read_text())
        except json.JSONDecodeError:
            raw = {}  # S3DiTConfig.from_json below reports the JSON error
        class_name = raw.get("_class_name", CLASS_NAMES[0]) if isinstance(raw, dict) else CLASS_NAMES[0]
        if class_name not in CLASS_NAMES:
            raise CheckpointError(f"{source.config_json} describes a {class_name}, not the Z-Image transformer "
                                  f"(expected _class_name in {list(CLASS_NAMES)})")
        found = S3DiTConfig.from_json(source.config_json)
        if given is not None and given != found:
            diff = {k: (v, found.to_dict()[k]) for k, v in given.to_dict().items() if found.to_dict()[k] != v}
            raise ValueError(f"config argument disagrees with {source.config_json} on {sorted(diff)} "
                             f"(argument vs file: {diff}); drop the argument or fix the file")
        return found, f"from {source.config_json}"
    if given is not None:
        return given, f"from the config argument ({config if isinstance(config, str) else 'S3DiTConfig'})"
    cfg, assumed = infer_config(source.shapes())
    logger.warning("%s has no config.json and no config= was given: config inferred from tensor shapes; %s are not "
                   "stored in weights and were set to Z-Image's values %s", source.description, assumed,
                   {k: cfg.to_dict()[k] for k in assumed})
    return cfg, f"inferred from tensor shapes ({cfg})"


def _build_on_meta(config: S3DiTConfig) -> S3DiT:
    """The model with parameters on the meta device (no memory); buffers stay real (accelerate's default)."""
    from accelerate import init_empty_weights

    from zwsi.model.s3dit import S3DiT

    with init_empty_weights(include_buffers=False):
        return S3DiT(config)


def _expected_shapes(model: nn.Module) -> dict[str, Shape]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_keys(expected: Mapping[str, Shape], found: Mapping[str, Shape], what: str, limit: int = 20) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = {k: (found[k], expected[k]) for k in sorted(set(expected) & set(found)) if found[k] != expected[k]}
    if not (missing or unexpected or mismatched):
        return

    def listing(title: str, rows: list[str]) -> list[str]:
        if not rows:
            return []
        more = [f"    ... and {len(rows) - limit} more"] if len(rows) > limit else []
        return [f"  {title} ({len(rows)}):", *(f"    {r}" for r in rows[:limit]), *more]

    hint = ""
    if len(mismatched) + len(missing) > len(expected) // 2:
        hint = "; most tensors differ, so the config probably does not describe these weights"
    lines = [
        f"checkpoint {what} does not match the model: {len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(mismatched)} shape mismatch(es){hint}",
        *listing("missing (in the model, not in the checkpoint)", [f"{k} {list(expected[k])}" for k in missing]),
        *listing("unexpected (in the checkpoint, not in the model)", [f"{k} {list(found[k])}" for k in unexpected]),
        *listing("shape mismatch (checkpoint vs model)",
                 [f"{k}: {list(a)} vs {list(b)}" for k, (a, b) in mismatched.items()]),
    ]
    raise StateDictMismatchError("\n".join(lines), missing, unexpected, mismatched)


def _assign_weights(model: nn.Module, source: _Source, dtype: torch.dtype, device: torch.device) -> None:
    """Read, cast, move and assign the tensors shard by shard; each tensor owns its memory (not the file's mmap)."""
    from tqdm.auto import tqdm

    total = len(source.shapes())
    with tqdm(total=total, desc="loading S3DiT", unit="tensor", disable=None) as bar:
        for shard in source.shards:
            part: dict[str, torch.Tensor] = {}
            for raw_key, tensor in shard.read():
                entries = source.entries(raw_key, tensor, _split_tensor)
                for key, value in entries:
                    cast = dtype if value.is_floating_point() else value.dtype
                    part[key] = value.to(device=device, dtype=cast, copy=True)
                    bar.update(1)
                del tensor, entries
            model.load_state_dict(part, strict=False, assign=True)
            del part
    model.to(device)  # the buffers, which were built real on the CPU
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{source.description}: tensors left unloaded on the meta device: {left[:10]}")


def _count_blocks(shapes: Mapping[str, Sequence[int]], stack: str) -> int:
    indices = {int(m.group(1)) for k in shapes if (m := re.match(rf"{stack}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def _config_of(model: nn.Module) -> S3DiTConfig:
    cfg = getattr(model, "config", None)
    if isinstance(cfg, S3DiTConfig):
        return cfg
    if isinstance(cfg, Mapping):  # diffusers' FrozenDict: keep only the config.json fields, validated
        return S3DiTConfig.from_dict({k: v for k, v in cfg.items() if not k.startswith("_")})
    raise TypeError(f"save_pretrained needs a model whose .config is an S3DiTConfig; got {type(cfg).__name__}")
