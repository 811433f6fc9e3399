"""`write_pyramid`: stream tiles into a pyramidal tiled SVS, OME-TIFF or generic TIFF that every slide reader opens.

Three containers (`format=`; headers and descriptions in `slide_io.formats`, measured per reader in
`benchmarks/reader_table.py`): ``"svs"`` (default) is the Aperio layout (level 0, thumbnail, reduced levels, label,
macro; µm/px and objective power in the ImageDescription) that OpenSlide 3.4.1 and 4, tiffslide, tifffile and
Bio-Formats read with every level, µm/px, objective power and associated images (libvips: levels and µm/px);
``"ome-tiff"`` puts the reduced levels in SubIFDs of level 0 (the Bio-Formats / QuPath pyramid; OpenSlide sees
level 0 only) with OME-XML; ``"tiff"`` is the generic layout of
shared/reference/ecosystem-notes.md §2 (levels as successive top-level directories, NewSubfileType=1 on reduced ones,
then a stripped thumbnail and label named by their description). Every level has tiles of `tile_size`² and
XResolution/YResolution in pixels per CENTIMETER.

Memory stays bounded whatever the slide size: level 0 is read from the source one band of tiles at a time, each
band is encoded and written at once, and the reduced levels are built from the finer level's bands (2×2 mean) and
spooled, already encoded, to temporary files beside the output; they are copied into the TIFF after level 0. At
most two level-0 bands (tile_size × width × 3 bytes each) and one band per reduced level are in RAM.

The file is written under a temporary name in the output folder and renamed over `path` only when complete.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from slide_io import formats
from slide_io.cleanup import partial_path, remove_stale, spool_prefix
from slide_io.errors import SlideWriteError
from slide_io.formats import DEFAULT_FORMAT, SlideFormat
from slide_io.provenance import Provenance, software_version
from slide_io.types import Compression, Mpp, Size

COMPRESSIONS: dict[str, int] = {"jpeg": 7, "deflate": 8, "lzw": 5, "zstd": 50000, "none": 1}
"""Compression name → TIFF Compression tag. Only 'jpeg' is lossy."""

LABEL_SIZE: Size = (600, 300)
MACRO_SIZE: Size = (LABEL_SIZE[0] + 2 * LABEL_SIZE[1], LABEL_SIZE[1])
"""The macro (a picture of the whole glass): the label on the left, the thumbnail fitted in a 2:1 box on the right."""

TileReader = Callable[[int, int, int, int], NDArray[np.uint8]]
"""`reader(x, y, w, h)` → the (h, w, 3) uint8 RGB pixels of level 0 at (x, y), size (w, h)."""


@runtime_checkable
class TileSource(Protocol):
    """Level-0 pixels of a slide to write: its size, its µm/px, and a reader of any (x, y, w, h) window."""

    @property
    def size(self) -> Size: ...

    @property
    def mpp(self) -> Mpp | None: ...

    def __call__(self, x: int, y: int, w: int, h: int) -> NDArray[np.uint8]: ...


@dataclass(frozen=True)
class CallableSource:
    """A `TileSource` from a plain function `reader(x, y, w, h)` and the slide's size and µm/px."""

    reader: TileReader
    size: Size
    mpp: Mpp | None = None

    def __call__(self, x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        return self.reader(x, y, w, h)


@dataclass(frozen=True)
class SlideSource:
    """A `TileSource` reading level 0 of an open `slide_io.Slide` (what `zwsi slide convert` streams from)."""

    slide: Any  # slide_io.reader.Slide (Any avoids an import cycle in annotations)

    @property
    def size(self) -> Size:
        return self.slide.dimensions  # type: ignore[no-any-return]

    @property
    def mpp(self) -> Mpp | None:
        return self.slide.mpp_or_none  # type: ignore[no-any-return]

    def __call__(self, x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        return self.slide.read_region((x, y), 0, (w, h), as_array=True)  # type: ignore[no-any-return]


def level_sizes(size: Size, tile_size: int) -> list[Size]:
    """(width, height) of every level: halve (rounding up) until the level fits in one tile."""
    sizes = [size]
    while max(sizes[-1]) > tile_size:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def downsample2(band: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """2×2 mean, rounded, of an (h, w, 3) band (PIL's box `reduce`); an odd last row/column averages its 1×2 / 2×1."""
    return np.asarray(Image.fromarray(band).reduce(2))


def _encoder(compression: str, quality: int) -> Callable[[NDArray[np.uint8]], bytes]:
    """The same codec call tifffile makes for this compression (JPEG: YCbCr 4:2:0, as the tags tifffile writes)."""
    import imagecodecs

    if compression == "jpeg":
        return lambda tile: bytes(
            imagecodecs.jpeg_encode(tile, level=quality, subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR")
        )
    if compression == "none":
        return lambda tile: tile.tobytes()
    codec = tifffile.TIFF.COMPRESSORS[COMPRESSIONS[compression]]
    return lambda tile: bytes(codec(tile))


def _tiles_of(band: NDArray[np.uint8], tile: int, pad_edge: bool) -> Iterator[NDArray[np.uint8]]:
    """Full `tile`² tiles of a band, left to right; short edge tiles padded (edge-replicated for JPEG, else 0)."""
    h, w = band.shape[:2]
    for x in range(0, w, tile):
        t = band[:, x : x + tile]
        if t.shape[0] != tile or t.shape[1] != tile:
            pad = ((0, tile - t.shape[0]), (0, tile - t.shape[1]), (0, 0))
            t = np.pad(t, pad, mode="edge") if pad_edge else np.pad(t, pad)
        yield np.ascontiguousarray(t)


class _ReducedLevel:
    """One reduced level being built: rows arrive from the finer level; full bands are encoded and spooled."""

    def __init__(self, index: int, size: Size, tile: int, spool: BinaryIO, keep: bool) -> None:
        self.index, self.size, self.tile, self.spool = index, size, tile, spool
        self.lengths: list[int] = []
        self.rows: list[NDArray[np.uint8]] = []
        self.buffered = 0
        self.kept: list[NDArray[np.uint8]] | None = [] if keep else None

    def take(self, rows: NDArray[np.uint8], last: bool) -> Iterator[tuple[NDArray[np.uint8], bool]]:
        """Add rows; yield (band, is_last) for each completed band of `tile` rows, and the remainder when `last`."""
        self.rows.append(rows)
        self.buffered += rows.shape[0]
        while self.buffered >= self.tile:
            band = self._pop(self.tile)
            yield band, last and self.buffered == 0
        if last and self.buffered:
            yield self._pop(self.buffered), True

    def _pop(self, n: int) -> NDArray[np.uint8]:
        data = np.concatenate(self.rows, axis=0) if len(self.rows) > 1 else self.rows[0]
        band, rest = data[:n], data[n:]
        self.rows = [rest] if rest.shape[0] else []
        self.buffered -= n
        if self.kept is not None:
            self.kept.append(band)
        return band


class _Pyramid:
    """Builds and spools levels 1.. from level-0 bands; keeps the level used for the thumbnail in memory."""

    def __init__(
        self,
        sizes: list[Size],
        tile: int,
        spool_dir: Path,
        encode: Callable[[NDArray[np.uint8]], bytes],
        pool: ThreadPoolExecutor,
        pad_edge: bool,
        thumb_level: int,
    ) -> None:
        self.tile, self.encode, self.pool, self.pad_edge = tile, encode, pool, pad_edge
        self.levels = [
            _ReducedLevel(i, s, tile, (spool_dir / f"level{i}.bin").open("w+b"), keep=(i == thumb_level))
            for i, s in enumerate(sizes)
            if i > 0
        ]
        self.thumb_level = thumb_level
        self.level0_kept: list[NDArray[np.uint8]] | None = [] if thumb_level == 0 else None

    def add_level1_rows(self, rows: NDArray[np.uint8], last: bool) -> None:
        """Feed rows of level 1 (level 0 already halved, tile by tile) down the pyramid."""
        self._feed(0, rows, last)

    def _feed(self, k: int, rows: NDArray[np.uint8], last: bool) -> None:
        if k >= len(self.levels):
            return
        level = self.levels[k]
        for out, out_last in level.take(rows, last):
            tiles = list(_tiles_of(out, self.tile, self.pad_edge))
            for data in self.pool.map(self.encode, tiles):
                level.spool.write(data)
                level.lengths.append(len(data))
            self._feed(k + 1, downsample2(out), out_last)

    def spooled(self, k: int) -> Iterator[bytes]:
        """Encoded tiles of level k >= 1, in TIFF order."""
        level = self.levels[k - 1]
        level.spool.flush()
        level.spool.seek(0)
        for n in level.lengths:
            yield level.spool.read(n)

    def thumbnail_pixels(self) -> NDArray[np.uint8]:
        """The whole level kept for the thumbnail, (h, w, 3)."""
        kept = self.level0_kept if self.thumb_level == 0 else self.levels[self.thumb_level - 1].kept
        if not kept:
            msg = "internal: thumbnail level was not kept"
            raise RuntimeError(msg)
        return np.concatenate(kept, axis=0)

    def close(self) -> None:
        for level in self.levels:
            level.spool.close()


def label_image(provenance: Provenance | None, size: Size = LABEL_SIZE) -> NDArray[np.uint8]:
    """The label: 'SYNTHETIC' in red capitals for generated slides (plus seed and report hash), else 'Z-WSI'."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    big = ImageFont.load_default(size=size[1] // 4)
    small = ImageFont.load_default(size=size[1] // 12)
    if provenance is None or provenance.synthetic:
        draw.text((size[0] // 2, size[1] // 3), "SYNTHETIC", fill=(200, 0, 0), font=big, anchor="mm")
        lines = ["Z-WSI generated - not a patient slide"]
    else:
        draw.text((size[0] // 2, size[1] // 3), "Z-WSI", fill=(0, 0, 0), font=big, anchor="mm")
        lines = ["converted pyramid"]
    if provenance is not None:
        if provenance.seed is not None:
            lines.append(f"seed {provenance.seed}")
        if provenance.report_sha256:
            lines.append(f"report {provenance.report_sha256[:16]}")
    for i, line in enumerate(lines):
        draw.text((size[0] // 2, size[1] * 0.62 + i * size[1] // 10), line, fill=(0, 0, 0), font=small, anchor="mm")
    return np.asarray(img)


def _as_source(source: TileSource | TileReader | Any, size: Size | None, mpp: Mpp | None) -> TileSource:
    from slide_io.reader import Slide

    if isinstance(source, Slide):
        return SlideSource(source)
    if isinstance(source, TileSource):
        return source
    if callable(source):
        if size is None:
            msg = "size=(width, height) is required when the source is a plain callable"
            raise ValueError(msg)
        return CallableSource(source, size, mpp)
    msg = f"source must be a Slide, a TileSource or a callable(x, y, w, h), got {type(source).__name__}"
    raise TypeError(msg)


def _check_tile(tile: Any, x: int, y: int, w: int, h: int, path: Path) -> NDArray[np.uint8]:
    arr = np.asarray(tile)
    if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
        msg = f"tile source returned shape {arr.shape} dtype {arr.dtype} at (x={x}, y={y}); expected ({h}, {w}, 3) uint8"
        raise SlideWriteError(msg, path)
    return arr


# long: the public writer documents its 12 options in a 35-line docstring; the body is about 60 lines
def write_pyramid(
    path: str | Path,
    source: TileSource | TileReader | Any,
    *,
    size: Size | None = None,
    mpp: float | tuple[float, float] | None = None,
    compression: Compression = "jpeg",
    quality: int = 90,
    tile_size: int = 256,
    provenance: Provenance | None = None,
    thumbnail_size: int = 1024,
    format: SlideFormat = DEFAULT_FORMAT,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Write a pyramidal tiled TIFF from level-0 tiles, with bounded memory, atomically.

    Args:
        path: output file: .svs, .tif or .tiff for 'svs'; .tif or .tiff for 'tiff'; .ome.tif or .ome.tiff for
            'ome-tiff'. Replaced only when the new file is complete.
        source: a `TileSource` (e.g. `WindowStore.pixel_source(level)`), an open `Slide` (level 0 is copied), or
            a callable `reader(x, y, w, h)` returning (h, w, 3) uint8 (then `size` is required).
        size: (width, height) of level 0, when `source` does not carry it.
        mpp: level-0 µm/px; defaults to the source's. Required: a slide without mpp is refused.
        compression: 'jpeg' (lossy, `quality`), or lossless 'deflate', 'lzw', 'zstd', 'none'.
        quality: JPEG quality 1-100.
        tile_size: tile edge in pixels, a multiple of 16.
        provenance: what to record in the file; None writes `Provenance()` (synthetic=True). Synthetic files say
            SYNTHETIC in the ImageDescription, in `Slide.properties['zwsi.synthetic']` and on the label image.
        thumbnail_size: longest edge of the thumbnail image.
        format: the container (`slide_io.formats`): 'svs' (Aperio layout: OpenSlide 3.4.1/4, tiffslide and
            Bio-Formats see mpp, objective power, thumbnail/label/macro), 'ome-tiff' (SubIFD pyramid and OME-XML for
            Bio-Formats / QuPath; OpenSlide sees level 0 only) or 'tiff' (generic pyramidal TIFF).
        workers: encoder threads (default: CPU count).
        progress: show a tqdm bar over level-0 bands.

    Returns:
        The final path.

    Raises:
        ValueError: bad option (compression, quality, tile size, mpp, size; 'svs' with non-square mpp).
        SlideFormatError: an unknown format, or a name that does not fit it (a ValueError too).
        MissingMppError: no mpp from the source nor the caller.
        SlideWriteError: the source returned a wrong tile; no file is left under `path`.
    """
    from slide_io.errors import MissingMppError

    path = Path(path)
    slide_format = formats.check_format(format)
    if compression not in COMPRESSIONS:
        msg = f"compression={compression!r} is not one of {tuple(COMPRESSIONS)}"
        raise ValueError(msg)
    if not 1 <= quality <= 100:
        msg = f"quality={quality} must be in 1..100"
        raise ValueError(msg)
    if tile_size <= 0 or tile_size % 16:
        msg = f"tile_size={tile_size} must be a positive multiple of 16"
        raise ValueError(msg)
    src = _as_source(source, size, None if mpp is None else Mpp.of(mpp))
    width, height = (int(v) for v in src.size)
    if width <= 0 or height <= 0:
        msg = f"size=({width}, {height}) must be positive (width, height)"
        raise ValueError(msg)
    level0_mpp = Mpp.of(mpp) if mpp is not None else src.mpp
    if level0_mpp is None:
        msg = "the tile source has no µm/px (mpp); supply one (CLI: --mpp; Python: write_pyramid(..., mpp=...))"
        raise MissingMppError(msg, path)
    provenance = Provenance() if provenance is None else provenance
    check_output_path(path, slide_format)
    sizes = level_sizes((width, height), tile_size)
    thumb_level = next(i for i, s in enumerate(sizes) if max(s) <= 2 * thumbnail_size)
    header = _Header(slide_format, sizes[0], tile_size, level0_mpp, compression, quality, provenance,
                     _fit(sizes[thumb_level], thumbnail_size))
    remove_stale(path.parent, path.name)

    raw_bytes = sum(w * h * 3 for w, h in sizes)
    if compression == "none":  # the size is known exactly: refuse before writing what cannot fit
        free = shutil.disk_usage(path.parent).free
        if free < raw_bytes:
            msg = (f"not enough disk space: an uncompressed pyramid of {width} x {height} px needs "
                   f"{raw_bytes / 1e9:.2f} GB, {path.parent} has {free / 1e9:.2f} GB free")
            raise SlideWriteError(msg, path)
    tmp = partial_path(path)
    workers = workers or os.cpu_count() or 1
    try:
        with tempfile.TemporaryDirectory(prefix=spool_prefix(), dir=path.parent) as spool_dir, ThreadPoolExecutor(
            workers
        ) as pool:
            pyramid = _Pyramid(
                sizes, tile_size, Path(spool_dir), _encoder(compression, quality), pool, compression == "jpeg",
                thumb_level,
            )
            try:
                with tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31, ome=False) as tw:
                    _write_slide(tw, src, pyramid, sizes, level0_mpp, compression, header, progress, path)
            finally:
                pyramid.close()
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            msg = (f"the disk filled up while writing (the level-0 pixels are {raw_bytes / 1e9:.2f} GB raw; "
                   f"{compression} output is typically {_TYPICAL_RATIO[compression]:.0%} of that, plus a third "
                   f"spooled while writing); {free / 1e9:.2f} GB free now in {path.parent}; nothing was left "
                   f"under the final name")
            raise SlideWriteError(msg, path) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


_TYPICAL_RATIO = {"jpeg": 0.1, "deflate": 0.6, "lzw": 0.7, "zstd": 0.55, "none": 1.0}


def check_output_path(path: Path, slide_format: str = DEFAULT_FORMAT) -> None:
    """Refuse an output that cannot be written, before any work.

    Raises:
        SlideFormatError: an unknown format, or a name that does not end as `slide_format` expects
            (`slide_io.formats.SUFFIXES`).
        SlideWriteError: the folder is missing, a file, read-only or not ours; `path` is a folder.
    """
    formats.check_suffix(path, slide_format)
    parent = path.parent
    if not parent.exists():
        msg = f"output folder {parent} does not exist; create it first"
        raise SlideWriteError(msg, path)
    if not parent.is_dir():
        msg = f"output folder {parent} is a file, not a folder"
        raise SlideWriteError(msg, path)
    if not os.access(parent, os.W_OK | os.X_OK):
        msg = f"output folder {parent} is not writable (read-only filesystem or permissions)"
        raise SlideWriteError(msg, path)
    if path.is_dir():
        msg = f"the output path is a folder; give a file name ending in {', '.join(formats.SUFFIXES[slide_format])}"
        raise SlideWriteError(msg, path)


def _level0_tiles(
    src: TileSource, pyramid: _Pyramid, size: Size, tile: int, pool: ThreadPoolExecutor,
    encode: Callable[[NDArray[np.uint8]], bytes], pad_edge: bool, progress: bool, path: Path,
) -> Iterator[bytes]:
    """Encoded level-0 tiles in TIFF order, one band of tiles at a time.

    Each tile goes to the worker threads as it is read, to be encoded and halved there (tiles have even sizes
    except at the slide edge, so halving tile by tile equals halving the band; codecs and PIL release the GIL).
    The next band is read while this band is being processed; the halved band then feeds the reduced levels.
    """
    width, height = size
    reduce = bool(pyramid.levels)
    keep0 = pyramid.level0_kept

    def work(t: NDArray[np.uint8], w: int, h: int) -> tuple[bytes, NDArray[np.uint8] | None]:
        full = t if (w, h) == (tile, tile) else np.pad(
            t, ((0, tile - h), (0, tile - w), (0, 0)), mode="edge" if pad_edge else "constant"
        )
        return encode(np.ascontiguousarray(full)), downsample2(t) if reduce else None

    def finish(y: int, h: int, futures: list[Future[tuple[bytes, NDArray[np.uint8] | None]]]) -> Iterator[bytes]:
        results = [f.result() for f in futures]
        if reduce:  # feed the reduced levels before the last yield: tifffile stops pulling after the last tile
            half = np.empty(((h + 1) // 2, (width + 1) // 2, 3), np.uint8)
            for i, (_, small) in enumerate(results):
                assert small is not None
                half[:, i * tile // 2 : i * tile // 2 + small.shape[1]] = small
            pyramid.add_level1_rows(half, last=y + h == height)
        for data, _ in results:
            yield data

    bands = range(0, height, tile)
    if progress:
        from tqdm import tqdm

        bands = tqdm(bands, desc=f"writing {path.name}", unit="band")
    pending: tuple[int, int, list[Future[tuple[bytes, NDArray[np.uint8] | None]]]] | None = None
    for y in bands:
        h = min(tile, height - y)
        full_band = np.empty((h, width, 3), np.uint8) if keep0 is not None else None
        futures = []
        for x in range(0, width, tile):
            w = min(tile, width - x)
            t = _check_tile(src(x, y, w, h), x, y, w, h, path)
            futures.append(pool.submit(work, t, w, h))
            if full_band is not None:
                full_band[:, x : x + w] = t
        if keep0 is not None and full_band is not None:
            keep0.append(full_band)
        if pending is not None:
            yield from finish(*pending)
        pending = (y, h, futures)
    if pending is not None:
        yield from finish(*pending)


@dataclass(frozen=True)
class _Header:
    """What the container needs besides the pixels: level-0 and associated-image descriptions, their sizes."""

    slide_format: SlideFormat
    size: Size
    tile: int
    mpp: Mpp
    compression: str
    quality: int
    provenance: Provenance
    thumb_size: Size

    def __post_init__(self) -> None:
        if self.slide_format == "svs" and self.mpp.x != self.mpp.y:
            msg = (f"format 'svs' stores one µm/px (Aperio MPP) but mpp=({self.mpp.x}, {self.mpp.y}) is not square; "
                   f"use format 'ome-tiff' or 'tiff'")
            raise ValueError(msg)

    @property
    def associated(self) -> list[tuple[str, Size]]:
        """(name, size) of the associated images in file order: thumbnail, label, then macro (not in 'tiff')."""
        names = [("thumbnail", self.thumb_size), ("label", LABEL_SIZE)]
        return names if self.slide_format == "tiff" else [*names, ("macro", MACRO_SIZE)]

    def level0(self) -> str:
        if self.slide_format == "svs":
            return formats.svs_description(self.size, self.tile, self.mpp, self.compression, self.quality,
                                           self.provenance)
        if self.slide_format == "ome-tiff":
            return formats.ome_xml(self.size, self.mpp, self.provenance, self.associated)
        return formats.tiff_description(self.provenance)

    def associated_description(self, name: str, size: Size) -> str | None:
        if self.slide_format == "svs":
            return formats.svs_associated_description(name, size)
        return name if self.slide_format == "tiff" else None


def _write_slide(
    tw: tifffile.TiffWriter, src: TileSource, pyramid: _Pyramid, sizes: list[Size], mpp: Mpp, compression: str,
    header: _Header, progress: bool, path: Path,
) -> None:
    """Level 0, then the reduced levels and associated images in the order of `header.slide_format`.

    'svs': level 0, thumbnail, reduced levels (NewSubfileType 0), label (1), macro (9). 'ome-tiff': level 0 with the
    reduced levels as its SubIFDs (NewSubfileType 1), then thumbnail, label, macro. 'tiff': level 0, reduced levels
    (NewSubfileType 1), thumbnail, label. The reduced levels are complete once level 0 is written.
    """
    common: dict[str, Any] = {
        "dtype": np.uint8, "tile": (header.tile, header.tile), "compression": COMPRESSIONS[compression],
        "photometric": "rgb", "resolutionunit": "CENTIMETER", "software": software_version(), "metadata": None,
    }
    fmt = header.slide_format

    def resolution(k: int) -> tuple[float, float]:
        w, h = sizes[k]
        return 1e4 / (mpp.x * sizes[0][0] / w), 1e4 / (mpp.y * sizes[0][1] / h)

    level0: Iterator[bytes] = _level0_tiles(src, pyramid, sizes[0], header.tile, pyramid.pool, pyramid.encode,
                                            compression == "jpeg", progress, path)
    extra: dict[str, Any] = {"subifds": len(sizes) - 1} if fmt == "ome-tiff" else {}
    tw.write(level0, shape=(sizes[0][1], sizes[0][0], 3), resolution=resolution(0),
             description=header.level0().encode("utf-8"),  # OME-XML holds "µm"; the other descriptions are ASCII
             **extra, **common)
    thumb = _thumbnail(pyramid.thumbnail_pixels(), header.thumb_size)
    label = label_image(header.provenance, LABEL_SIZE)
    images = {"thumbnail": thumb, "label": label, "macro": macro_image(thumb, label)}
    if fmt == "svs":
        _write_associated(tw, header, images, ["thumbnail"])
    for k in range(1, len(sizes)):
        w, h = sizes[k]
        tw.write(pyramid.spooled(k), shape=(h, w, 3), resolution=resolution(k), subfiletype=0 if fmt == "svs" else 1,
                 **common)
    _write_associated(tw, header, images, [name for name, _ in header.associated if fmt != "svs" or name != "thumbnail"])


_SUBFILETYPES = {"svs": {"thumbnail": 0, "label": 1, "macro": 9}}


def _fit(size: Size, longest: int) -> Size:
    """`size` scaled (never up) so that its longest edge is at most `longest`."""
    w, h = size
    scale = min(1.0, longest / max(w, h))
    return (w, h) if scale == 1.0 else (max(1, round(w * scale)), max(1, round(h * scale)))


def _thumbnail(pixels: NDArray[np.uint8], size: Size) -> NDArray[np.uint8]:
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def macro_image(thumb: NDArray[np.uint8], label: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A `MACRO_SIZE` overview of the glass: `label` on the left, `thumb` fitted and centred on the right."""
    lh, lw = label.shape[:2]
    canvas = Image.new("RGB", (lw + 2 * lh, lh), "white")
    canvas.paste(Image.fromarray(label), (0, 0))
    scale = min(2 * lh / thumb.shape[1], lh / thumb.shape[0])
    box = (max(1, round(thumb.shape[1] * scale)), max(1, round(thumb.shape[0] * scale)))
    small = Image.fromarray(thumb).resize(box, Image.Resampling.LANCZOS)
    canvas.paste(small, (lw + (2 * lh - box[0]) // 2, (lh - box[1]) // 2))
    return np.asarray(canvas)


def _write_associated(
    tw: tifffile.TiffWriter, header: _Header, images: dict[str, NDArray[np.uint8]], names: list[str]
) -> None:
    """Stripped associated images (thumbnail JPEG, label deflate, macro JPEG), described as the format expects."""
    for name in names:
        image = images[name]
        tw.write(
            image, photometric="rgb", compression="deflate" if name == "label" else "jpeg",
            description=header.associated_description(name, (image.shape[1], image.shape[0])), metadata=None,
            subfiletype=_SUBFILETYPES.get(header.slide_format, {}).get(name, 0), rowsperstrip=64,
            software=software_version(),
        )
