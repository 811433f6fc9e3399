"""Reading backend over OpenSlide (openslide-python + openslide-bin): SVS, NDPI, generic tiled TIFF, and more."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openslide
from numpy.typing import NDArray
from PIL import Image

from slide_io._backend import SlideBackend, rgba_to_rgb_on_white
from slide_io.errors import SlideReadError, UnsupportedSlideError


class OpenSlideBackend(SlideBackend):
    """A slide opened with `openslide.OpenSlide` (errors latch: after a failed read the handle is unusable)."""

    name = "openslide"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            msg = "openslide cannot read this format (OME-TIFF and non-slide files are unsupported)"
            raise UnsupportedSlideError(msg, path) from exc
        except openslide.OpenSlideError as exc:
            msg = f"openslide failed to open the slide: {exc}"
            raise SlideReadError(msg, path) from exc

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return dict(self._slide.properties)

    @property
    def vendor(self) -> str:
        return str(self._slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "unknown"))

    @property
    def mpp(self) -> tuple[float, float] | None:
        props = self._slide.properties
        x, y = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
        if x is None or y is None or float(x) <= 0 or float(y) <= 0:
            return None
        return float(x), float(y)

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        images = {}
        for name in self._slide.associated_images.keys():
            try:
                images[name] = self._slide.associated_images[name]
            except openslide.OpenSlideError as exc:
                msg = f"openslide failed to read the associated image {name!r}: {exc}"
                raise SlideReadError(msg, self.path) from exc
        return images

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> NDArray[np.uint8]:
        try:
            rgba = np.asarray(self._slide.read_region(location, level, size))
        except openslide.OpenSlideError as exc:
            msg = f"openslide failed to read region {location} level {level} size {size}: {exc}"
            raise SlideReadError(msg, self.path) from exc
        return rgba_to_rgb_on_white(rgba)

    def close(self) -> None:
        self._slide.close()
