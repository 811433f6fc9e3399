"""Attention over packed token sequences, behind one function with explicit, logged, overridable backends.

All samples of a batch are concatenated into one (N, H, Dh) sequence without padding. An `AttentionLayout`
says which keys each query sees: the queries are cut into consecutive blocks, and the queries of a block attend to
one contiguous key range. A batch of independent samples is block-diagonal (each block's keys = its queries); the
cached-context mask of DESIGN §3 adds, per sample, a block of report/context queries whose key range leaves out the
target tokens.

Backends (`attention(..., backend=name)`, else env `ZWSI_ATTENTION`, else the default for the device):

| name          | where | how                                                                                    |
|---------------|-------|----------------------------------------------------------------------------------------|
| `flash_attn`  | CUDA  | flash-attn varlen, the first importable of FA3 (`flash_attn_interface`), FA4           |
|               |       | (`flash_attn.cute`), FA2 (`flash_attn`)                                                |
| `varlen`      | CUDA  | `torch.nn.attention.varlen.varlen_attn`                                                |
| `sdpa`        | any   | one unmasked `scaled_dot_product_attention` per group of equal-size blocks (cuDNN,     |
|               |       | flash or CPU kernels); a view, no copy, for consecutive independent samples            |
| `sdpa_masked` | any   | one SDPA call over the whole packed sequence with a dense boolean mask                 |
| `math`        | any   | plain softmax(q k^T / sqrt(Dh)) v in float32, the reference                            |

Default: `flash_attn` on CUDA when installed, else `sdpa` (on CUDA and CPU).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

BACKENDS = ("flash_attn", "varlen", "sdpa", "sdpa_masked", "math")
ENV_VAR = "ZWSI_ATTENTION"


# ----------------------------------------------------------------------------------------------------------------
#  Layout of a packed sequence
# ----------------------------------------------------------------------------------------------------------------


class AttentionLayout:
    """Query blocks of a packed sequence and the contiguous key range each block attends to.

    Args:
        q_bounds: (start, end) of each query block; consecutive and covering [0, total).
        k_bounds: (start, end) of the keys each query block attends to.
    """

    def __init__(self, q_bounds: Sequence[tuple[int, int]], k_bounds: Sequence[tuple[int, int]]) -> None:
        if len(q_bounds) != len(k_bounds) or not q_bounds:
            raise ValueError(f"need one key range per query block, got {len(q_bounds)} and {len(k_bounds)}")
        expected = 0
        for (qs, qe), (ks, ke) in zip(q_bounds, k_bounds):
            if qs != expected or qe <= qs or ke <= ks or ks < 0:
                raise ValueError(
                    "query blocks must be consecutive and non-empty with non-empty key ranges, "
                    f"got {q_bounds} / {k_bounds}"
                )
            expected = qe
        if any(ke > expected for _, ke in k_bounds):
            raise ValueError(f"key ranges {k_bounds} exceed the sequence length {expected}")
        self.q_bounds = tuple((int(a), int(b)) for a, b in q_bounds)
        self.k_bounds = tuple((int(a), int(b)) for a, b in k_bounds)
        self.total = expected
        self._device_cache: dict[tuple[str, torch.device], object] = {}

    @classmethod
    def block_diagonal(cls, lengths: Sequence[int]) -> AttentionLayout:
        """Independent sequences of the given lengths, packed one after another."""
        bounds, start = [], 0
        for n in lengths:
            bounds.append((start, start + int(n)))
            start += int(n)
        return cls(bounds, bounds)

    @property
    def is_block_diagonal(self) -> bool:
        return self.q_bounds == self.k_bounds

    @property
    def max_q(self) -> int:
        return max(e - s for s, e in self.q_bounds)

    @property
    def max_k(self) -> int:
        return max(e - s for s, e in self.k_bounds)

    def cu_seqlens(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        """(cu_seq_q, cu_seq_k, key_index) int32 for varlen kernels; key_index gathers the keys when the key ranges
        are not the query blocks themselves (None when they are)."""
        key = ("cu", device)
        if key not in self._device_cache:
            q_lens = [e - s for s, e in self.q_bounds]
            k_lens = [e - s for s, e in self.k_bounds]
            cu_q = torch.tensor([0, *_cumsum(q_lens)], dtype=torch.int32, device=device)  # (nb+1,)
            cu_k = torch.tensor([0, *_cumsum(k_lens)], dtype=torch.int32, device=device)  # (nb+1,)
            k_index = None
            if not self.is_block_diagonal:
                k_index = torch.cat([torch.arange(s, e, device=device) for s, e in self.k_bounds])  # (sum k_lens,)
            self._device_cache[key] = (cu_q, cu_k, k_index)
        return self._device_cache[key]  # type: ignore[return-value]

    def dense_mask(self, device: torch.device) -> Tensor:
        """(N, N) boolean mask, True where query n may attend to key m."""
        key = ("mask", device)
        if key not in self._device_cache:
            mask = torch.zeros(self.total, self.total, dtype=torch.bool)
            for (qs, qe), (ks, ke) in zip(self.q_bounds, self.k_bounds):
                mask[qs:qe, ks:ke] = True
            self._device_cache[key] = mask.to(device)
        return self._device_cache[key]  # type: ignore[return-value]

    def groups(self) -> list[list[int]]:
        """Indices of the blocks grouped by (query length, key length), in first-seen order."""
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, ((qs, qe), (ks, ke)) in enumerate(zip(self.q_bounds, self.k_bounds)):
            by_shape.setdefault((qe - qs, ke - ks), []).append(i)
        return list(by_shape.values())


def _cumsum(values: Sequence[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


# ----------------------------------------------------------------------------------------------------------------
#  Backends: each takes q, k, v (N, H, Dh) and a layout, and returns (N, H, Dh)
# ----------------------------------------------------------------------------------------------------------------


def _attn_math(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """Plain softmax attention in float32 with the dense mask: the reference the other backends are checked against."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    qf, kf, vf = (x.float().transpose(0, 1) for x in (q, k, v))  # (H, N, Dh)
    scores = (qf @ kf.transpose(-1, -2)) * scale  # (H, N, N)
    scores = scores.masked_fill(~layout.dense_mask(q.device), float("-inf"))  # (H, N, N)
    out = torch.softmax(scores, dim=-1) @ vf  # (H, N, Dh)
    return out.transpose(0, 1).to(q.dtype)  # (N, H, Dh)


def _attn_sdpa_masked(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """One SDPA call over the whole packed sequence; the dense boolean mask keeps samples apart."""
    mask = None if len(layout.q_bounds) == 1 else layout.dense_mask(q.device)[None, None]  # (1, 1, N, N)
    q4, k4, v4 = (x.transpose(0, 1)[None] for x in (q, k, v))  # (1, H, N, Dh)
    out = F.scaled_dot_product_attention(q4, k4, v4, attn_mask=mask)  # (1, H, N, Dh)
    return out[0].transpose(0, 1)  # (N, H, Dh)


def _attn_sdpa(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """Unmasked SDPA per group of equal-size blocks (one batched call per group); no padding, no mask."""
    pieces: list[tuple[int, Tensor]] = []
    for group in layout.groups():
        qb = [layout.q_bounds[i] for i in group]
        kb = [layout.k_bounds[i] for i in group]
        contiguous = qb == kb and all(qb[j][1] == qb[j + 1][0] for j in range(len(qb) - 1))
        n_q, n_k = qb[0][1] - qb[0][0], kb[0][1] - kb[0][0]
        if contiguous:  # consecutive independent blocks of one size: a view, no copy
            start, end = qb[0][0], qb[-1][1]
            qg, kg, vg = (x[start:end].unflatten(0, (len(group), n_q)) for x in (q, k, v))  # (G, Lq, H, Dh)
        else:
            q_idx = torch.cat([torch.arange(s, e, device=q.device) for s, e in qb])  # (G*Lq,)
            k_idx = torch.cat([torch.arange(s, e, device=q.device) for s, e in kb])  # (G*Lk,)
            qg = q[q_idx].unflatten(0, (len(group), n_q))  # (G, Lq, H, Dh)
            kg, vg = (x[k_idx].unflatten(0, (len(group), n_k)) for x in (k, v))  # (G, Lk, H, Dh)
        qg, kg, vg = (x.transpose(1, 2) for x in (qg, kg, vg))  # (G, H, L, Dh)
        out = F.scaled_dot_product_attention(qg, kg, vg).transpose(1, 2)  # (G, Lq, H, Dh)
        if contiguous:
            pieces.append((qb[0][0], out.flatten(0, 1)))  # (G*Lq, H, Dh)
        else:
            pieces.extend((s, out[j]) for j, (s, _) in enumerate(qb))
    if len(pieces) == 1:
        return pieces[0][1]
    by_start = dict(pieces)
    return torch.cat([by_start[s] for s in sorted(by_start)], dim=0)  # (N, H, Dh), query order


def _gather_keys(k: Tensor, v: Tensor, layout: AttentionLayout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    cu_q, cu_k, k_index = layout.cu_seqlens(k.device)
    if k_index is not None:
        k, v = k[k_index], v[k_index]  # (sum Lk, H, Dh)
    return cu_q, cu_k, k, v


def _attn_varlen(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """`torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16)."""
    from torch.nn.attention.varlen import varlen_attn

    cu_q, cu_k, k, v = _gather_keys(k, v, layout)
    out = varlen_attn(q, k, v, cu_q, cu_k, layout.max_q, layout.max_k)  # (N, H, Dh)
    return out[0] if isinstance(out, tuple) else out


def _attn_flash(q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout) -> Tensor:
    """flash-attn varlen (FA3, FA4 or FA2: whichever `flash_attn_interface_name()` found)."""
    name, fn = _flash_attn_varlen()
    cu_q, cu_k, k, v = _gather_keys(k, v, layout)
    if name == "fa4":
        out = fn(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=layout.max_q, max_seqlen_k=layout.max_k)
    else:
        out = fn(q, k, v, cu_q, cu_k, layout.max_q, layout.max_k)
    return out[0] if isinstance(out, tuple) else out  # (N, H, Dh); FA3/FA4 may also return the LSE


_FLASH_INTERFACES = (
    ("fa3", "flash_attn_interface"),
    ("fa4", "flash_attn.cute"),
    ("fa2", "flash_attn"),
)


@cache
def _flash_attn_varlen() -> tuple[str, Callable[..., Any]]:
    """The first importable flash-attn varlen function; raises ImportError when none is installed."""
    for name, module in _FLASH_INTERFACES:
        try:
            fn = importlib.import_module(module).flash_attn_varlen_func
        except (ImportError, AttributeError):
            continue
        return name, fn
    raise ImportError(f"no flash-attn varlen interface is installed (tried {[m for _, m in _FLASH_INTERFACES]})")


def flash_attn_available() -> bool:
    try:
        _flash_attn_varlen()
    except ImportError:
        return False
    return True


_IMPLS: dict[str, Callable[[Tensor, Tensor, Tensor, AttentionLayout], Tensor]] = {
    "flash_attn": _attn_flash,
    "varlen": _attn_varlen,
    "sdpa": _attn_sdpa,
    "sdpa_masked": _attn_sdpa_masked,
    "math": _attn_math,
}


# ----------------------------------------------------------------------------------------------------------------
#  Choice of backend and the one entry point
# ----------------------------------------------------------------------------------------------------------------

_logged_choices: set[tuple[str, str, str]] = set()


def resolve_backend(name: str | None, device: torch.device) -> str:
    """The backend to use on `device`: `name`, else env ZWSI_ATTENTION, else the device default (logged once).

    Raises:
        ValueError: an unknown name, or a CUDA-only backend asked for on another device.
        ImportError: `flash_attn` asked for but not installed.
    """
    source = "argument"
    if name is None:
        name, source = os.environ.get(ENV_VAR) or None, f"env {ENV_VAR}"
    if name is None:
        source = "default"
        name = "flash_attn" if device.type == "cuda" and flash_attn_available() else "sdpa"
    if name not in _IMPLS:
        raise ValueError(f"unknown attention backend {name!r} (from {source}); expected one of {list(BACKENDS)}")
    if name in ("flash_attn", "varlen") and device.type != "cuda":
        raise ValueError(f"attention backend {name!r} (from {source}) needs a CUDA device, got {device.type!r}")
    if name == "flash_attn":
        _flash_attn_varlen()  # raises ImportError with the interfaces tried
    if (name, source, device.type) not in _logged_choices:
        _logged_choices.add((name, source, device.type))
        detail = f" ({_flash_attn_varlen()[0]})" if name == "flash_attn" else ""
        logger.info("attention backend %s%s on %s (%s)", name, detail, device.type, source)
    return name


def attention(
    q: Tensor, k: Tensor, v: Tensor, layout: AttentionLayout, backend: str | None = None, resolved: bool = False
) -> Tensor:
    """Softmax attention (scale 1/sqrt(Dh), no dropout) over a packed sequence.

    Args:
        q: (N, H, Dh) queries.
        k: (N, H, Dh) keys.
        v: (N, H, Dh) values.
        layout: which keys each query block attends to.
        backend: one of BACKENDS; None -> env ZWSI_ATTENTION -> device default.
        resolved: `backend` already came from `resolve_backend` (the model resolves once per forward, outside
            compiled blocks); skip the checks and the logging.

    Returns:
        (N, H, Dh) in q's dtype.
    """
    if q.shape[0] != layout.total:
        raise ValueError(f"packed sequence has {q.shape[0]} tokens but the layout covers {layout.total}")
    name = backend if resolved and backend is not None else resolve_backend(backend, q.device)
    return _IMPLS[name](q, k, v, layout)
