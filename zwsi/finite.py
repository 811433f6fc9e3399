"""A checkpoint with NaN or infinite weights is never written: `check_finite` names the first bad tensor."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class NonFiniteWeightsError(ValueError):
    """Weights hold NaN or infinity; saving them would leave a checkpoint that generates nothing."""


def check_finite(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], what: str) -> None:
    """Raise `NonFiniteWeightsError` naming `what` and the first tensor with a NaN or an infinity.

    Args:
        tensors: name -> tensor (a state dict) or (name, tensor) pairs (`named_parameters()`).
        what: how the message names the checkpoint ("checkpoint at step 12").
    """
    import torch

    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    for name, t in items:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteWeightsError(
                f"{what} not written: {name} holds {bad} NaN/infinite value(s) of {t.numel()}; the run diverged "
                f"(lower optim.lr or check the data); the previous checkpoint is kept")
