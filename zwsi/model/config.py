"""The S3-DiT configuration: exactly the fields of the hub `transformer/config.json`, plus named presets.

The Turbo checkpoint's `transformer/config.json` holds the fields below (and `_class_name` / `_diffusers_version`,
hub metadata whose names start with `_` and which are ignored). A key that is not a field is an error: a typo in a
config must not silently build a different model.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Constants of Z-Image that are not in config.json (zimage-architecture.md §1).
ADALN_EMBED_DIM = 256  # width of the timestep conditioning c (min(dim, 256) in the reference)
SEQ_MULTI_OF = 32  # the image and caption token sequences are each padded to a multiple of this
FREQUENCY_EMBEDDING_SIZE = 256  # sinusoidal timestep embedding width
TIMESTEP_MLP_HIDDEN = 1024  # t_embedder mid size
FINAL_NORM_EPS = 1e-6  # LayerNorm eps of the final layer


@dataclass
class S3DiTConfig:
    """Hyper-parameters of the S3-DiT; field names are those of the hub `transformer/config.json`."""

    all_patch_size: tuple[int, ...] = (2,)  # spatial patch sizes; the first one is used
    all_f_patch_size: tuple[int, ...] = (1,)  # frame patch sizes; the first one is used
    in_channels: int = 16  # latent channels (out_channels = in_channels)
    dim: int = 3840  # hidden size
    n_layers: int = 30  # main single-stream blocks (`layers.*`)
    n_refiner_layers: int = 2  # blocks in each of `noise_refiner` and `context_refiner`
    n_heads: int = 30  # attention heads; head_dim = dim / n_heads
    n_kv_heads: int = 30  # in config.json but unused by the reference (no GQA); must equal n_heads
    norm_eps: float = 1e-5  # every RMSNorm
    qk_norm: bool = True  # RMSNorm over head_dim on q and k
    cap_feat_dim: int = 2560  # text-encoder hidden size (Qwen3-4B)
    rope_theta: float = 256.0  # the same theta on all three RoPE axes
    t_scale: float = 1000.0  # t in [0, 1] is multiplied by this before the sinusoidal embedding
    axes_dims: tuple[int, ...] = (32, 48, 48)  # RoPE dims of the (t, h, w) axes; they sum to head_dim
    axes_lens: tuple[int, ...] = (1536, 512, 512)  # reference position bounds per axis (informative here)
    siglip_feat_dim: int | None = None  # written by diffusers for its Omni variant; must stay None here

    def __post_init__(self) -> None:
        for name in ("all_patch_size", "all_f_patch_size", "axes_dims", "axes_lens"):
            setattr(self, name, tuple(int(v) for v in getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(
                f"n_kv_heads={self.n_kv_heads} must equal n_heads={self.n_heads} "
                "(the S3-DiT has no grouped-query attention)"
            )
        if len(self.axes_dims) != 3 or len(self.axes_lens) != 3:
            raise ValueError(
                f"axes_dims={self.axes_dims} and axes_lens={self.axes_lens} must each have 3 entries (t, h, w)"
            )
        if any(d % 2 for d in self.axes_dims):
            raise ValueError(f"axes_dims={self.axes_dims} must all be even (RoPE rotates pairs)")
        if sum(self.axes_dims) != self.head_dim:
            raise ValueError(
                f"sum(axes_dims)={sum(self.axes_dims)} must equal head_dim = dim/n_heads = {self.head_dim}"
            )
        if not self.all_patch_size or not self.all_f_patch_size:
            raise ValueError("all_patch_size and all_f_patch_size must each name at least one patch size")
        if self.siglip_feat_dim is not None:
            raise ValueError(
                f"siglip_feat_dim={self.siglip_feat_dim}: the Omni/SigLIP variant is not supported; expected None"
            )

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def patch_size(self) -> int:
        return self.all_patch_size[0]

    @property
    def f_patch_size(self) -> int:
        return self.all_f_patch_size[0]

    @property
    def patch_key(self) -> str:
        """Key of the embedder / final layer in the ModuleDicts, e.g. "2-1"."""
        return f"{self.patch_size}-{self.f_patch_size}"

    @property
    def patch_dim(self) -> int:
        """Features of one patch: pF * p * p * C (64 for Z-Image)."""
        return self.f_patch_size * self.patch_size * self.patch_size * self.in_channels

    @property
    def ffn_hidden_dim(self) -> int:
        return int(self.dim / 3 * 8)

    @property
    def adaln_dim(self) -> int:
        """Width of the timestep conditioning c: min(dim, 256)."""
        return min(self.dim, ADALN_EMBED_DIM)

    # ------------------------------------------------------------------ (de)serialisation
    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "S3DiTConfig") -> S3DiTConfig:
        """Build from a config.json-style dict (`zwsi.typed_config`); keys starting with `_` are hub metadata and
        are ignored.

        Raises:
            ValueError: a key that is not a field of S3DiTConfig (named with the valid fields), or a value of the
                wrong type (named with the type expected); ``where`` (a file) prefixes the message.
        """
        from zwsi.typed_config import from_mapping

        return from_mapping(cls, {k: v for k, v in d.items() if not k.startswith("_")}, where=where)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> S3DiTConfig:
        """Read a hub-style `config.json` (see `from_dict`)."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The config.json dict (tuples become lists, as in the hub file)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_json(self, path: str | os.PathLike[str]) -> None:
        """Write config.json atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        text = json.dumps({"_class_name": "ZImageTransformer2DModel", **self.to_dict()}, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def preset(cls, name: str) -> S3DiTConfig:
        """A named preset: "z-image-turbo" (6.155B, the hub Turbo config), "zwsi-small" (the built-in default
        model, 2.0M) or "tiny" (for tests).

        Raises:
            ValueError: for an unknown name (lists the presets).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown S3DiT preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


PRESETS: dict[str, dict[str, Any]] = {
    # Tongyi-MAI/Z-Image-Turbo transformer/config.json (zimage-architecture.md §1): 6,154,908,736 parameters.
    "z-image-turbo": dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=3840, n_layers=30, n_refiner_layers=2,
        n_heads=30, n_kv_heads=30, norm_eps=1e-5, qk_norm=True, cap_feat_dim=2560, rope_theta=256.0, t_scale=1000.0,
        axes_dims=(32, 48, 48), axes_lens=(1536, 512, 512),
    ),
    # The built-in default model's transformer (zwsi/default_model): 2.0M parameters, sized so an 8,000² px slide
    # generates on 2 CPU cores in minutes. Patch 4 (not 2) quarters the tokens per pixel; head_dim 64 = 16 + 24 + 24;
    # cap_feat_dim 384 = all-MiniLM-L6-v2's hidden size.
    "zwsi-small": dict(
        all_patch_size=(4,), all_f_patch_size=(1,), in_channels=16, dim=128, n_layers=4, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, cap_feat_dim=384, axes_dims=(16, 24, 24), axes_lens=(1536, 512, 512),
    ),
    # A tiny model for CPU tests: head_dim 32 = 8 + 12 + 12.
    "tiny": dict(
        in_channels=16, dim=64, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
        axes_dims=(8, 12, 12), axes_lens=(1536, 512, 512),
    ),
}
