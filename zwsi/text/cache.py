"""An on-disk cache of text features, keyed by the encoder's fingerprint and the SHA-256 of each text.

One safetensors file per (encoder, text): ``ROOT/<encoder key[:16]>/<text sha256>.safetensors`` holding the
(L, D) features. Files are written to a temporary name and renamed, so an interrupted run leaves no partial entry
and a later run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file


class _Encoder(Protocol):
    def fingerprint(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]: ...


def text_key(text: str) -> str:
    """SHA-256 of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Features of texts under one root folder, per encoder.

    Args:
        root: the cache folder (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, encoder: _Encoder, text: str) -> Path:
        """Where the features of `text` under `encoder` are stored."""
        return self.root / encoder.fingerprint()[:16] / f"{text_key(text)}.safetensors"

    def get(self, encoder: _Encoder, text: str) -> torch.Tensor | None:
        """The cached (L, D) features, or None."""
        path = self.path(encoder, text)
        return load_file(path)["features"] if path.is_file() else None

    def put(self, encoder: _Encoder, text: str, features: torch.Tensor) -> Path:
        """Store features atomically (temporary file, then rename)."""
        path = self.path(encoder, text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"features": features.detach().cpu().contiguous()}, str(tmp),
                  metadata={"encoder": encoder.fingerprint(), "text_sha256": text_key(text)})
        os.replace(tmp, path)
        return path

    def encode(
        self, encoder: _Encoder, texts: Sequence[str], *, batch_size: int = 8, progress: bool = False
    ) -> list[torch.Tensor]:
        """Features for every text: cached ones are read, the others encoded in batches and stored.

        An interrupted run keeps every batch already stored; the next run encodes only the rest.

        Args:
            encoder: a text encoder (`zwsi.text.encoders.TextEncoder`).
            texts: the texts to encode (duplicates are encoded once).
            batch_size: texts per encoder call.
            progress: show a tqdm progress bar over the batches to encode.

        Returns:
            One (L_i, D) tensor per text, on the CPU, in the order of `texts`.
        """
        out: list[torch.Tensor | None] = [self.get(encoder, t) for t in texts]
        missing = list(dict.fromkeys(t for t, f in zip(texts, out) if f is None))
        computed: dict[str, torch.Tensor] = {}
        starts = range(0, len(missing), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="encoding texts", unit="batch")
        for i in starts:
            batch = missing[i:i + batch_size]
            for text, features in zip(batch, encoder.encode(batch)):
                self.put(encoder, text, features)
                computed[text] = features.detach().cpu()
        return [f if f is not None else computed[t] for t, f in zip(texts, out)]
