"""Type aliases and small value types shared by slide_io; every resolution carries its unit.

Coordinates on a slide are `(x, y)` in level-0 pixels (OpenSlide's convention); array indices are `(row, col)`,
so a region at `(x, y)` of size `(w, h)` is the array slice `[y:y + h, x:x + w]`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Location = tuple[int, int]
"""(x, y) in level-0 pixels."""
Size = tuple[int, int]
"""(width, height) in pixels of the level or resolution concerned."""
Units = Literal["mpp", "level", "baseline"]
"""µm per pixel; a pyramid level index; level-0 (baseline) pixels."""
Compression = Literal["jpeg", "deflate", "lzw", "zstd", "none"]


class Mpp(NamedTuple):
    """Physical pixel size in µm per pixel along x (columns) and y (rows)."""

    x: float
    y: float

    @classmethod
    def of(cls, value: float | tuple[float, float] | Mpp) -> Mpp:
        """An `Mpp` from one number (square pixels) or an (x, y) pair; raises ValueError unless both are > 0."""
        x, y = (value, value) if isinstance(value, (int, float)) else value
        if not (x > 0 and y > 0):
            msg = f"mpp must be > 0 µm/px, got {value!r}"
            raise ValueError(msg)
        return cls(float(x), float(y))
