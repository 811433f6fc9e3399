"""Reading backend over tiffslide (tifffile): SVS, NDPI, generic TIFF and OME-TIFF pyramids."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import tiffslide
from numpy.typing import NDArray
from PIL import Image

from slide_io._backend import SlideBackend
from slide_io.errors import NotASlideError, SlideReadError, UnsupportedSlideError

_OME_UNITS_PER_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


class TiffSlideBackend(SlideBackend):
    """A slide opened with `tiffslide.TiffSlide`; OME-TIFF µm/px falls back to the OME-XML PhysicalSize."""

    name = "tiffslide"

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._slide = tiffslide.TiffSlide(str(path))
            self._props: dict[str, Any] = dict(self._slide.properties)
            self._ome = bool(self._slide.ts_tifffile.is_ome)
        except tifffile.TiffFileError as exc:
            msg = f"not a TIFF-based slide: {exc}"
            raise NotASlideError(msg, path) from exc
        except NotImplementedError as exc:
            msg = f"tiffslide does not support this TIFF layout: {exc}"
            raise UnsupportedSlideError(msg, path) from exc
        except Exception as exc:
            msg = f"tiffslide failed to open the slide: {type(exc).__name__}: {exc}"
            raise SlideReadError(msg, path) from exc

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def properties(self) -> Mapping[str, str]:
        return {k: str(v) for k, v in self._props.items() if v is not None}

    @property
    def vendor(self) -> str:
        vendor = self._props.get("tiffslide.vendor")
        if vendor:
            return str(vendor)
        return "ome-tiff" if self._ome else "generic-tiff"

    @property
    def mpp(self) -> tuple[float, float] | None:
        x, y = self._props.get("tiffslide.mpp-x"), self._props.get("tiffslide.mpp-y")
        if x and y and float(x) > 0 and float(y) > 0:
            return float(x), float(y)
        return self._ome_mpp() if self._ome else None

    def _ome_mpp(self) -> tuple[float, float] | None:
        xml = self._slide.ts_tifffile.ome_metadata or ""
        found = []
        for axis in "XY":
            size = re.search(rf'PhysicalSize{axis}="([0-9.eE+-]+)"', xml)
            unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', xml)
            scale = _OME_UNITS_PER_UM.get(unit.group(1) if unit else "µm")
            if size is None or scale is None:
                return None
            found.append(float(size.group(1)) * scale)
        return found[0], found[1]

    @property
    def objective_power(self) -> float | None:
        """tiffslide's objective power, else an OME-TIFF's Objective NominalMagnification (tiffslide reads none)."""
        power = super().objective_power
        if power is None and self._ome:
            found = re.search(r'NominalMagnification="([0-9.eE+-]+)"', self._slide.ts_tifffile.ome_metadata or "")
            power = float(found.group(1)) if found else None
        return power

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        images = {}
        for name in self._slide.associated_images:
            if not name:
                continue
            try:
                images[name] = self._slide.associated_images[name]
            except Exception as exc:  # tifffile / imagecodecs errors on a damaged page
                msg = f"tiffslide failed to read the associated image {name!r}: {type(exc).__name__}: {exc}"
                raise SlideReadError(msg, self.path) from exc
        return images

    def read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> NDArray[np.uint8]:
        try:
            arr = self._slide.read_region(location, level, size, as_array=True)
        except Exception as exc:
            msg = f"tiffslide failed to read region {location} level {level} size {size}: {type(exc).__name__}: {exc}"
            raise SlideReadError(msg, self.path) from exc
        arr = np.asarray(arr)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)

    def close(self) -> None:
        self._slide.close()
