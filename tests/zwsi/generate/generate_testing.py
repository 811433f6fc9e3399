"""Helpers shared by the generation tests."""

from __future__ import annotations

from typing import Any

import torch


class Counting(torch.nn.Module):
    """The real model, counting the window-forwards it is asked for."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model, self.config, self.forwards = model, model.config, 0

    def forward(self, batch: list[Any]) -> list[torch.Tensor]:
        self.forwards += len(batch)
        return self.model(batch)
