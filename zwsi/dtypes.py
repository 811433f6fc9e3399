"""The one dtype resolver: the names configs use ("fp32", "bf16", "fp16", or torch's "float32", "bfloat16",
"float16") and torch dtypes, to a torch dtype.

    resolve_dtype("bf16")            # torch.bfloat16
    resolve_dtype(torch.float16)     # torch.float16
"""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """`torch.float32/bfloat16/float16` or their names ("fp32", "bf16", "fp16", "float32", ...) -> torch.dtype.

    Raises:
        ValueError: any other dtype or name (the accepted names are listed).
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ValueError(f"dtype={dtype!r} is not supported; expected one of {sorted(DTYPES)} or the torch dtypes "
                     "torch.float32, torch.bfloat16, torch.float16")
