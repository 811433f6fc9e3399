"""The interface each reading backend (openslide, tiffslide) implements behind `slide_io.Slide`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image


class SlideBackend(ABC):
    """One open slide file; `read` only ever receives regions that lie wholly inside the level."""

    name: str

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) of every level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel, for every level."""

    @property
    @abstractmethod
    def properties(self) -> Mapping[str, str]:
        """The backend's metadata as strings (openslide.* or tiffslide.* keys plus vendor keys)."""

    @property
    @abstractmethod
    def vendor(self) -> str:
        """Format name as the backend detects it: 'aperio', 'hamamatsu', 'generic-tiff', 'ome-tiff', ..."""

    @property
    @abstractmethod
    def mpp(self) -> tuple[float, float] | None:
        """(x, y) µm/px of level 0 from the file, or None when the file stores none."""

    @property
    def objective_power(self) -> float | None:
        """The objective power the file states (``openslide.objective-power`` / ``tiffslide.objective-power``), or
        None."""
        for key in ("openslide.objective-power", "tiffslide.objective-power"):
            value = self.properties.get(key)
            try:
                power = float(value) if value else None
            except ValueError:
                power = None
            if power is not None and power > 0:
                return power
        return None

    @property
    @abstractmethod
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Label, macro, thumbnail... as RGB(A) PIL images."""

    @abstractmethod
    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> NDArray[np.uint8]:
        """RGB pixels (h, w, 3) of a region wholly inside `level`; location in level-0 pixels."""

    @abstractmethod
    def close(self) -> None:
        """Release the file."""


def rgba_to_rgb_on_white(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """(h, w, 4) non-premultiplied RGBA to (h, w, 3) RGB composited on white (glass), exact where alpha is 255."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    out = rgb.astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((out + 127) // 255).astype(np.uint8)
