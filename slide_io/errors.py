"""The `SlideError` family: every failure to open, read or write a slide, each naming the path and the value at fault.

Errors that are also bad arguments subclass the matching built-in (`ValueError`, `IndexError`,
`FileNotFoundError`), so callers may catch either the slide-specific class or the built-in.
"""

from __future__ import annotations

from pathlib import Path


class SlideError(Exception):
    """Base class of every slide IO error; `path` is the slide concerned (None when there is no file)."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{message} [{path}]" if path is not None else message)


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist or is not a file."""


class NotASlideError(SlideError):
    """The file exists but is no slide image (text, a PNG, an empty file, ...)."""


class UnsupportedSlideError(SlideError):
    """The file is a slide format or vendor that the chosen backend cannot read (e.g. OME-TIFF through openslide)."""


class SlideReadError(SlideError):
    """The file is damaged: truncated, corrupt tiles, or a backend failure while decoding."""


class InvalidRegionError(SlideError, ValueError):
    """A region with a zero or negative size, or one that lies wholly outside the slide."""


class SlideLevelError(SlideError, IndexError):
    """A pyramid level outside `range(level_count)`."""


class MissingMppError(SlideError, ValueError):
    """The slide stores no physical resolution (µm/px) and the caller supplied none."""


class SlideWriteError(SlideError):
    """A pyramid could not be written (bad tile from the source, bad option); nothing is left under the final name."""


class SlideFormatError(SlideWriteError, ValueError):
    """An unknown container name, or an output name whose ending does not fit the container (`slide_io.formats`)."""


class StoreError(SlideError):
    """A zarr window store was opened or written wrongly (missing level, shape mismatch, wrong kind)."""
