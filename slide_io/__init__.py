"""Slide IO: open real slides, physical resolution, tissue, tiling grids, zarr stores, pyramidal TIFF writing.

This package never imports torch.

Conventions: slide coordinates are (x, y) in level-0 pixels as in OpenSlide, sizes are (width, height), arrays
are (row, col[, channel]); every resolution is µm/px (`Mpp`). All errors belong to the `SlideError` family.

    with slide_io.open_slide("CMU-1-Small-Region.svs") as slide:
        rgba = slide.read_region((x, y), level, (w, h))               # PIL RGBA, as OpenSlide
        rgb = slide.read_region((x, y), level, (w, h), as_array=True)  # (h, w, 3) uint8
        rgb = slide.read_region_mpp((x, y), 2.0, (512, 512))           # any µm/px, from the best level
        grid = tile_grid(slide.dimensions, slide.mpp, mpp=1.0, size=(256, 256),
                         tissue=detect_tissue(slide), min_tissue=0.5)

    store = WindowStore.create("slide.zarr", "pixel"); store.create_level(0, (rows, cols), mpp=0.5, grid=(256, 256))
    store.write_window(0, row0, col0, rgb_window)                      # resumable: store.pending(0)
    write_pyramid("out.tiff", store.pixel_source(0), provenance=Provenance(seed=1, report_sha256=...))
"""

from slide_io.errors import (
    InvalidRegionError,
    MissingMppError,
    NotASlideError,
    SlideError,
    SlideFormatError,
    SlideLevelError,
    SlideNotFoundError,
    SlideReadError,
    SlideWriteError,
    StoreError,
    UnsupportedSlideError,
)
from slide_io.formats import DEFAULT_FORMAT, FORMATS, SlideFormat, objective_power
from slide_io.provenance import Provenance, read_provenance, sha256_file, sha256_text
from slide_io.reader import Slide, open_slide
from slide_io.store import LevelInfo, WindowStore
from slide_io.tiling import TileGrid, Window, tile_grid
from slide_io.tissue import TissueMask, banded_tissue_mask, detect_tissue, tissue_mask_rgb
from slide_io.types import Mpp
from slide_io.writer import CallableSource, SlideSource, TileSource, write_pyramid

__all__ = [
    "CallableSource",
    "LevelInfo",
    "SlideSource",
    "TileGrid",
    "TileSource",
    "TissueMask",
    "Window",
    "WindowStore",
    "banded_tissue_mask",
    "detect_tissue",
    "tile_grid",
    "tissue_mask_rgb",
    "write_pyramid",
    "DEFAULT_FORMAT",
    "FORMATS",
    "SlideFormat",
    "objective_power",
    "InvalidRegionError",
    "MissingMppError",
    "Mpp",
    "NotASlideError",
    "Provenance",
    "Slide",
    "SlideError",
    "SlideFormatError",
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
