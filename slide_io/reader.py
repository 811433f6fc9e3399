"""`open_slide` and `Slide`: one OpenSlide-compatible reader over the openslide and tiffslide backends.

Coordinates follow OpenSlide: a location is `(x, y)` in level-0 pixels, a size is `(width, height)` in pixels of
the level read. Arrays are `(row, col, channel)`: the region at `(x, y)` of size `(w, h)` is an `(h, w, 3)` array.

`read_region` returns what OpenSlide returns, an RGBA PIL image, unless `as_array=True`, which gives an
`(h, w, 3)` uint8 RGB array. A region may overhang the slide edge: overhanging pixels are transparent
`(0, 0, 0, 0)` in the RGBA image and white (glass) in the array. A region wholly outside the level is an error.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from slide_io._backend import SlideBackend
from slide_io.errors import (
    InvalidRegionError,
    MissingMppError,
    NotASlideError,
    SlideError,
    SlideLevelError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)
from slide_io.provenance import Provenance, read_provenance
from slide_io.types import Location, Mpp, Size

Backend = Literal["auto", "openslide", "tiffslide"]
MAX_READ_PIXELS = 16 * 2**20
"""Most level pixels one resampled read (`read_region_mpp`, `get_thumbnail`) asks a backend for at once (48 MB RGB);
larger regions are read block by block."""
MAX_ASSOCIATED_PIXELS = 64 * 2**20
"""Largest label / thumbnail image of our own pyramids read whole (ours are 1024² at most)."""
BACKENDS: tuple[str, ...] = ("auto", "openslide", "tiffslide")
OWN_VENDOR = "zwsi"


def _is_ome_tiff(path: Path) -> bool:
    try:
        with tifffile.TiffFile(path) as tf:
            return bool(tf.is_ome)
    except Exception:  # noqa: BLE001 - not a TIFF, or unreadable: let the backends report it
        return False


class _CaptureWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tiff_damage(path: Path) -> str | None:
    """Why a TIFF is truncated (IFD chain or tile data past the end of the file), or None when intact or no TIFF."""
    size = path.stat().st_size
    capture = _CaptureWarnings()
    logger = logging.getLogger("tifffile")
    logger.addHandler(capture)
    try:
        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                hostile = _hostile_geometry(page)
                if hostile is not None:
                    return hostile
                offsets, counts = getattr(page, "dataoffsets", ()), getattr(page, "databytecounts", ())
                if offsets and counts:
                    end = max(o + c for o, c in zip(offsets, counts))
                    if end > size:
                        return f"truncated: image data of directory {page.index} ends at byte {end} > file size {size}"
    except Exception:  # noqa: BLE001 - not a TIFF at all: the backends decide
        return None
    finally:
        logger.removeHandler(capture)
    bad = [m for m in capture.messages if "invalid" in m and "offset" in m]
    return f"truncated or corrupt: {bad[0].split('>')[-1].strip()}" if bad else None


MAX_TILE_SIDE = 16384
MAX_LEVEL_SIDE = 2**21
MAX_CHUNK_BYTES = 1 << 30


def _hostile_geometry(page: object) -> str | None:
    """Why a TIFF directory's geometry is beyond what any slide uses (a reader would allocate gigabytes for one tile
    or strip), or None. Checked before a backend sees the file: openslide aborts the process on such allocations."""
    def get(name: str) -> int:
        return int(getattr(page, name, 0) or 0)

    index = getattr(page, "index", "?")
    width, length, spp = get("imagewidth"), get("imagelength"), max(1, get("samplesperpixel"))
    if width > MAX_LEVEL_SIDE or length > MAX_LEVEL_SIDE:
        return f"corrupt: directory {index} is {width} x {length} px, beyond {MAX_LEVEL_SIDE:,} px a side"
    if spp > 8 or get("bitspersample") > 32:
        return f"corrupt: directory {index} has {spp} samples of {get('bitspersample')} bits per pixel"
    if getattr(page, "is_tiled", False):
        tw, tl = get("tilewidth"), get("tilelength")
        if not (0 < tw <= MAX_TILE_SIDE and 0 < tl <= MAX_TILE_SIDE):
            return f"corrupt: directory {index} has {tw} x {tl} px tiles, beyond {MAX_TILE_SIDE:,} px a side"
    else:
        rows = min(get("rowsperstrip") or length, length)
        if rows * width * spp * max(1, get("bitspersample") // 8) > MAX_CHUNK_BYTES:
            return f"corrupt: directory {index} has strips of {rows} rows x {width} px, beyond {MAX_CHUNK_BYTES:,} bytes"
    return None


def _make_backend(path: Path, backend: str) -> SlideBackend:
    if backend == "openslide":
        from slide_io._openslide_backend import OpenSlideBackend

        return OpenSlideBackend(path)
    from slide_io._tiffslide_backend import TiffSlideBackend

    return TiffSlideBackend(path)


def open_slide(path: str | Path, backend: Backend = "auto", *, mpp: float | tuple[float, float] | None = None) -> Slide:
    """Open a whole-slide image.

    Args:
        path: Aperio SVS, Hamamatsu NDPI, generic tiled TIFF, OME-TIFF, or a Z-WSI pyramid.
        backend: "openslide", "tiffslide", or "auto": OME-TIFF goes to tiffslide (openslide sees one level at most),
            anything else to openslide, falling back to tiffslide when openslide cannot read it.
        mpp: µm/px to use when the file stores none (a float for square pixels, or (x, y)); ignored otherwise.

    Returns:
        An open `Slide`; use it as a context manager or call `close()`.

    Raises:
        ValueError: unknown backend or non-positive mpp.
        SlideNotFoundError: no such file.
        NotASlideError: the file is no slide image (empty, text, PNG...).
        UnsupportedSlideError: the chosen backend cannot read this format.
        SlideReadError: the file is damaged (a truncated TIFF is refused here; corrupt tiles raise on read).
    """
    if backend not in BACKENDS:
        msg = f"backend={backend!r} is not one of {BACKENDS}"
        raise ValueError(msg)
    override = None if mpp is None else Mpp.of(mpp)
    path = Path(path)
    if not path.exists():
        msg = "no such slide file"
        raise SlideNotFoundError(msg, path)
    if not path.is_file() or path.stat().st_size == 0:
        msg = "not a slide: a directory or an empty file"
        raise NotASlideError(msg, path)
    damage = _tiff_damage(path)
    if damage is not None:
        raise SlideReadError(damage, path)
    if backend != "auto":
        return Slide(_make_backend(path, backend), override)
    if _is_ome_tiff(path):
        return Slide(_make_backend(path, "tiffslide"), override)
    try:
        return Slide(_make_backend(path, "openslide"), override)
    except UnsupportedSlideError as openslide_err:
        try:
            return Slide(_make_backend(path, "tiffslide"), override)
        except NotASlideError as exc:
            msg = "not a slide: neither openslide nor tiffslide can read it"
            raise NotASlideError(msg, path) from exc
        except SlideError:
            raise
        except Exception as exc:  # pragma: no cover - tiffslide raised something unexpected
            raise openslide_err from exc


class Slide:
    """An open slide with OpenSlide's API, physical resolution (`mpp`) and resolution-aware reads.

    Use `open_slide` to build one. Level-0 physical resolution is `mpp`; level `k` has
    `mpp * level_downsamples[k]`.
    """

    def __init__(self, backend: SlideBackend, mpp: Mpp | None = None) -> None:
        self._backend = backend
        self._mpp_override = mpp
        self._closed = False
        self.path: Path = backend.path

    # --- OpenSlide API -------------------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """'openslide' or 'tiffslide'."""
        return self._backend.name

    @property
    def dimensions(self) -> Size:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @cached_property
    def level_dimensions(self) -> tuple[Size, ...]:
        """(width, height) of every level, level 0 first."""
        return self._backend.level_dimensions

    @cached_property
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per pixel of every level."""
        return self._backend.level_downsamples

    @cached_property
    def provenance(self) -> Provenance | None:
        """Provenance written by `write_pyramid`, or None for slides from elsewhere."""
        try:
            return read_provenance(self.path)
        except SlideError:
            return None

    @property
    def is_synthetic(self) -> bool:
        """True when the file says it was generated (Z-WSI provenance with synthetic=true)."""
        return self.provenance is not None and self.provenance.synthetic

    @property
    def vendor(self) -> str:
        """'zwsi' for our own pyramids, else the backend's format name ('aperio', 'hamamatsu', 'generic-tiff', ...)."""
        return OWN_VENDOR if self.provenance is not None else self._backend.vendor

    @cached_property
    def properties(self) -> Mapping[str, str]:
        """The backend's properties plus `zwsi.*` keys: vendor, backend, mpp-x/-y, objective-power, synthetic and
        provenance."""
        props = dict(self._backend.properties)
        props["zwsi.vendor"] = self.vendor
        props["zwsi.backend"] = self.backend
        mpp = self.mpp_or_none
        if mpp is not None:
            props["zwsi.mpp-x"], props["zwsi.mpp-y"] = repr(mpp.x), repr(mpp.y)
        if self.objective_power is not None:
            props["zwsi.objective-power"] = f"{self.objective_power:g}"
        if self.provenance is not None:
            props["zwsi.synthetic"] = "true" if self.provenance.synthetic else "false"
            props["zwsi.provenance"] = self.provenance.to_json()
        return props

    @cached_property
    def objective_power(self) -> float | None:
        """The objective power the file states (Aperio AppMag, OME NominalMagnification), or None."""
        return self._backend.objective_power

    @cached_property
    def associated_images(self) -> Mapping[str, Image.Image]:
        """Label, macro, thumbnail... as PIL images (our pyramids: 'thumbnail' and 'label')."""
        images = dict(self._backend.associated_images)
        if self.provenance is not None:
            images.update(_own_associated_images(self.path))
        return images

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is <= `downsample` (level 0 when none is)."""
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-9):
                best = level
        return best

    @overload
    def read_region(self, location: Location, level: int, size: Size, *, as_array: Literal[False] = ...) -> Image.Image: ...
    @overload
    def read_region(self, location: Location, level: int, size: Size, *, as_array: Literal[True]) -> NDArray[np.uint8]: ...

    def read_region(
        self, location: Location, level: int, size: Size, *, as_array: bool = False
    ) -> Image.Image | NDArray[np.uint8]:
        """Read a region of one level.

        Args:
            location: (x, y) top-left in level-0 pixels.
            level: pyramid level, 0 is full resolution.
            size: (width, height) in pixels of `level`.
            as_array: return an (h, w, 3) uint8 RGB array (overhang white) instead of an RGBA PIL image
                (overhang transparent), which is what OpenSlide returns.

        Raises:
            SlideLevelError: level not in range(level_count).
            InvalidRegionError: zero or negative size, or a region wholly outside the level.
            SlideReadError: the file is damaged where the region lies.
        """
        self._check_open()
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
        if not 0 <= level < self.level_count:
            msg = f"level={level} out of range(0, {self.level_count})"
            raise SlideLevelError(msg, self.path)
        if w <= 0 or h <= 0:
            msg = f"size={size} must be positive (width, height)"
            raise InvalidRegionError(msg, self.path)
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        c0, c1 = _inside(x / ds, w, lw)
        r0, r1 = _inside(y / ds, h, lh)
        if c1 <= c0 or r1 <= r0:
            msg = (
                f"region location={location} size={size} at level {level} lies wholly outside the level "
                f"({lw}x{lh} px, {self.dimensions[0]}x{self.dimensions[1]} at level 0)"
            )
            raise InvalidRegionError(msg, self.path)
        if (c0, r0, c1, r1) == (0, 0, w, h):
            rgb = self._backend.read((x, y), level, (w, h))
            alpha = None
        else:
            inner = self._backend.read((x + round(c0 * ds), y + round(r0 * ds)), level, (c1 - c0, r1 - r0))
            rgb = np.full((h, w, 3), 255, np.uint8)
            rgb[r0:r1, c0:c1] = inner
            alpha = np.zeros((h, w), np.uint8)
            alpha[r0:r1, c0:c1] = 255
        if as_array:
            return rgb
        if alpha is None:
            alpha = np.full((h, w), 255, np.uint8)
        rgba = np.dstack([rgb, alpha])
        rgba[alpha == 0] = 0
        return Image.fromarray(rgba, "RGBA")

    def get_thumbnail(self, size: Size) -> Image.Image:
        """An RGB thumbnail fitting in `size` (aspect kept), from the best level, read region by region (memory stays
        bounded by `MAX_READ_PIXELS` and the thumbnail, whatever the pyramid)."""
        self._check_open()
        if size[0] <= 0 or size[1] <= 0:
            msg = f"thumbnail size={size} must be positive"
            raise InvalidRegionError(msg, self.path)
        w0, h0 = self.dimensions
        scale = max(w0 / size[0], h0 / size[1], 1.0)
        level = self.get_best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        out = (max(1, round(w0 / scale)), max(1, round(h0 / scale)))
        region = self._read_resampled((0, 0), level, (lw / out[0], lh / out[1]), out, Image.Resampling.LANCZOS)
        return Image.fromarray(region)

    # --- physical resolution ---------------------------------------------------------------------------------------
    @property
    def mpp_or_none(self) -> Mpp | None:
        """Level-0 µm/px from the file, else the caller's override, else None."""
        found = self._backend.mpp
        if found is not None:
            return Mpp(*found)
        return self._mpp_override

    @property
    def mpp(self) -> Mpp:
        """Level-0 µm/px (x, y).

        Raises:
            MissingMppError: the file stores none and `open_slide(..., mpp=)` gave none.
        """
        mpp = self.mpp_or_none
        if mpp is None:
            msg = "the slide stores no µm/px (mpp); supply one (CLI: --mpp; zwsi prepare: --slide-mpp; Python: open_slide(path, mpp=...))"
            raise MissingMppError(msg, self.path)
        return mpp

    def level_mpp(self, level: int) -> Mpp:
        """µm/px of a level: level-0 mpp times its downsample."""
        ds = self.level_downsamples[level]
        return Mpp(self.mpp.x * ds, self.mpp.y * ds)

    def read_region_mpp(
        self,
        location: Location,
        mpp: float | tuple[float, float],
        size: Size,
        *,
        resample: Image.Resampling = Image.Resampling.LANCZOS,
    ) -> NDArray[np.uint8]:
        """Read a region at any physical resolution, from the best level, resampled.

        Args:
            location: (x, y) top-left in level-0 pixels.
            mpp: requested µm/px (one number, or (x, y)).
            size: (width, height) of the result in pixels at `mpp`.
            resample: PIL filter used when the level's resolution differs from `mpp`.

        Returns:
            (h, w, 3) uint8 RGB array; exactly the level's pixels when `mpp` equals a level's mpp.

        Raises:
            MissingMppError: the slide has no mpp and none was supplied.
            InvalidRegionError: bad size, or the region lies wholly outside the slide.
        """
        target = Mpp.of(mpp)
        w, h = (int(v) for v in size)
        if w <= 0 or h <= 0:
            msg = f"size={size} must be positive (width, height)"
            raise InvalidRegionError(msg, self.path)
        base = self.mpp
        fx, fy = target.x / base.x, target.y / base.y  # level-0 px per output px
        level = self.get_best_level_for_downsample(min(fx, fy))
        ds = self.level_downsamples[level]
        return self._read_resampled(location, level, (fx / ds, fy / ds), (w, h), resample)

    def _read_resampled(self, location: Location, level: int, scale: tuple[float, float], size: Size,
                        resample: Image.Resampling) -> NDArray[np.uint8]:
        """(h, w, 3) pixels of `level` from level-0 `location`, `scale` level px per output px, resampled.

        A source region up to `MAX_READ_PIXELS` is read at once; a larger one is read in blocks of output rows and
        columns, each with the filter's margin around it (clipped to the same source region), so the result equals
        the one-shot resample (up to Pillow's fixed-point rounding near block edges: a few levels in under 0.5% of
        pixels) while memory holds one block and the output.
        """
        w, h = size
        sx, sy = scale
        lw, lh = max(1, math.ceil(w * sx - 1e-6)), max(1, math.ceil(h * sy - 1e-6))
        if lw * lh <= MAX_READ_PIXELS:
            region = self.read_region(location, level, (lw, lh), as_array=True)
            if (lw, lh) == (w, h):
                return region
            return np.asarray(Image.fromarray(region).resize((w, h), resample, box=(0.0, 0.0, w * sx, h * sy)))
        ds = self.level_downsamples[level]
        mx, my = math.ceil(3 * max(sx, 1.0)) + 2, math.ceil(3 * max(sy, 1.0)) + 2  # Lanczos support + rounding
        side = max(1, math.isqrt(MAX_READ_PIXELS))  # source block side in level pixels, margins included
        bw, bh = max(1, int((side - 2 * mx) / sx)), max(1, int((side - 2 * my) / sy))  # output block size
        bw, bh = -(-w // -(-w // bw)), -(-h // -(-h // bh))  # balanced: no sliver of a block at the edge
        out = np.empty((h, w, 3), np.uint8)
        for i0 in range(0, h, bh):
            i1 = min(h, i0 + bh)
            y0, y1 = i0 * sy, i1 * sy
            ry0, ry1 = max(0, math.floor(y0 - my)), min(lh, math.ceil(y1 + my))
            for j0 in range(0, w, bw):
                j1 = min(w, j0 + bw)
                x0, x1 = j0 * sx, j1 * sx
                rx0, rx1 = max(0, math.floor(x0 - mx)), min(lw, math.ceil(x1 + mx))
                loc = (location[0] + round(rx0 * ds), location[1] + round(ry0 * ds))
                block = self.read_region(loc, level, (rx1 - rx0, ry1 - ry0), as_array=True)
                if (j1 - j0, i1 - i0) == (rx1 - rx0, ry1 - ry0) and (rx0, ry0) == (j0, i0):
                    out[i0:i1, j0:j1] = block
                    continue
                img = Image.fromarray(block).resize((j1 - j0, i1 - i0), resample,
                                                    box=(x0 - rx0, y0 - ry0, x1 - rx0, y1 - ry0))
                out[i0:i1, j0:j1] = np.asarray(img)
        return out

    # --- lifetime ----------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            msg = f"cannot read from a closed slide [{self.path}]"
            raise ValueError(msg)

    def close(self) -> None:
        """Release the file; reads afterwards raise ValueError."""
        if not self._closed:
            self._backend.close()
            self._closed = True

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, vendor={self.vendor!r}, levels={self.level_count})"


def _inside(start: float, length: int, limit: int) -> tuple[int, int]:
    """Output pixels [i0, i1) of a run of `length` starting at level coordinate `start` that lie in [0, limit)."""
    i0 = max(0, math.ceil(-start - 1e-9))
    i1 = min(length, math.floor(limit - start + 1e-9))
    return i0, i1


def _own_associated_images(path: Path) -> dict[str, Image.Image]:
    """'thumbnail' and 'label' pages of a Z-WSI pyramid (plain TIFF directories named by their description)."""
    images: dict[str, Image.Image] = {}
    with tifffile.TiffFile(path) as tf:
        for page in tf.pages:
            desc = getattr(page, "description", "")
            if desc in ("thumbnail", "label") and isinstance(page, tifffile.TiffPage) and not page.is_tiled:
                if math.prod(page.shape) > MAX_ASSOCIATED_PIXELS * 4:
                    msg = f"associated image {desc!r} is {page.shape}, beyond {MAX_ASSOCIATED_PIXELS:,} pixels"
                    raise SlideReadError(msg, path)
                try:
                    images[desc] = Image.fromarray(page.asarray())
                except Exception as exc:  # a damaged strip: tifffile / imagecodecs errors
                    msg = f"associated image {desc!r} is damaged: {type(exc).__name__}: {exc}"
                    raise SlideReadError(msg, path) from exc
    return images
