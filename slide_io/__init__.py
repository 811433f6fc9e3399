"""Slide IO: open real slides, physical resolution, tissue, tiling grids, zarr stores, pyramidal TIFF writing.

This package never imports torch.

Conventions: slide coordinates are (x, y) in level-0 pixels as in OpenSlide, sizes are (width, height), arrays
are (row, col[, channel]); every resolution is µm/px (`Mpp`). All errors belong to the `SlideError` family.

    with slide_io.open_slide("CMU-1-Small-Region.svs") as slide:
        rgba = slide.read_region((x, y), level, (w, h))               # PIL RGBA, as OpenSlide
        rgb = slide.read_region((x, y), level, (w, h), as_array=True)  # (h, w, 3) uint8
        rgb = slide.read_region_mpp((x, y), 2.0, (512, 512))           # any µm/px, from the best level
"""

from slide_io.errors import (
    InvalidRegionError,
    MissingMppError,
    NotASlideError,
    SlideError,
    SlideLevelError,
    SlideNotFoundError,
    SlideReadError,
    SlideWriteError,
    StoreError,
    UnsupportedSlideError,
)
from slide_io.provenance import Provenance, read_provenance, sha256_file, sha256_text
from slide_io.reader import Slide, open_slide
from slide_io.types import Mpp

__all__ = [
    "InvalidRegionError",
    "MissingMppError",
    "Mpp",
    "NotASlideError",
    "Provenance",
    "Slide",
    "SlideError",
    "SlideLevelError",
    "SlideNotFoundError",
    "SlideReadError",
    "SlideWriteError",
    "StoreError",
    "UnsupportedSlideError",
    "open_slide",
    "read_provenance",
    "sha256_file",
    "sha256_text",
]
