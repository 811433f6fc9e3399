"""`WindowStore`: a slide's latents or pixels as sharded zarr v3 arrays, written window by window, resumable.

Layout of one store (one zarr group per slide, one sub-group per magnification level):

    slide.zarr/                 attrs: zwsi_store=1, kind ('latent' | 'pixel'), channels, dtype, + caller attrs
                                       (e.g. latent_scaling={'scaling_factor': ..., 'shift_factor': ...})
      <level>/                  attrs: mpp [x, y] µm per array pixel, origin [x, y] level-0 slide pixels of
                                       array pixel (0, 0), grid [h, w] window-grid cell, shape [rows, cols]
        data                    latent: (C, rows, cols) float; pixel: (rows, cols, 3) uint8; sharded
        done                    (ceil(rows / grid_h), ceil(cols / grid_w)) bool: cell fully written

`write_window` writes the array, then marks every grid cell it covers completely as done, so a writer that is
killed and restarted redoes at most the window in flight (`pending` lists what is left). zarr 3's local store
writes every file (chunks, shards, zarr.json metadata) to a temporary name and renames it, so each shard and each
attribute update is atomic. One writer process per store at a time; readers may run alongside.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import DTypeLike, NDArray

from slide_io.errors import StoreError
from slide_io.types import Mpp, Size

StoreKind = Literal["latent", "pixel"]
KINDS: tuple[str, ...] = ("latent", "pixel")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LevelInfo:
    """One level of a store: array shape (rows, cols), µm/px, level-0 origin (x, y), window-grid cell (h, w)."""

    level: int
    shape: tuple[int, int]
    mpp: Mpp
    origin: tuple[int, int]
    grid: tuple[int, int]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of the done mask."""
        return math.ceil(self.shape[0] / self.grid[0]), math.ceil(self.shape[1] / self.grid[1])


def _span(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, slice):
        if value.step not in (None, 1):
            msg = f"{name}={value} must have step 1"
            raise ValueError(msg)
        return int(value.start or 0), int(value.stop)
    start, stop = value
    return int(start), int(stop)


class WindowStore:
    """A slide's latents (C, rows, cols) or pixels (rows, cols, 3) per level, written as windows arrive.

    Build with `WindowStore.create(...)` or `WindowStore.open(...)`. Coordinates are array (row, col) of the level;
    `LevelInfo.origin` and `mpp` map them onto the slide (level-0 x = origin_x + col * mpp.x / slide_mpp.x).
    """

    def __init__(self, group: zarr.Group, path: Path) -> None:
        self._group = group
        self.path = path
        attrs: dict[str, Any] = dict(group.attrs)
        if attrs.get("zwsi_store") != FORMAT_VERSION or attrs.get("kind") not in KINDS:
            msg = f"not a Z-WSI window store (attrs zwsi_store={attrs.get('zwsi_store')!r}, kind={attrs.get('kind')!r})"
            raise StoreError(msg, path)
        self.kind: StoreKind = attrs["kind"]
        self.channels: int = int(attrs["channels"])
        self.dtype = np.dtype(attrs["dtype"])

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        kind: StoreKind,
        *,
        channels: int | None = None,
        dtype: DTypeLike | None = None,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
    ) -> WindowStore:
        """Create an empty store.

        Args:
            path: folder to create (conventionally `*.zarr`).
            kind: 'latent' (arrays (C, rows, cols), float) or 'pixel' (arrays (rows, cols, 3) uint8).
            channels: latent channels C (required for 'latent'; 3 for 'pixel').
            dtype: latent dtype (default float16); pixels are always uint8.
            attrs: JSON-serialisable slide attributes (slide id, latent_scaling, report hash, ...).
            overwrite: replace an existing store; otherwise an existing path is an error.

        Raises:
            ValueError: bad kind, channels or dtype.
            StoreError: the path exists and overwrite is False.
        """
        path = Path(path)
        if kind not in KINDS:
            msg = f"kind={kind!r} is not one of {KINDS}"
            raise ValueError(msg)
        if kind == "pixel":
            if channels not in (None, 3) or dtype not in (None, np.uint8, "uint8"):
                msg = f"pixel stores are (rows, cols, 3) uint8; got channels={channels}, dtype={dtype}"
                raise ValueError(msg)
            np_dtype: np.dtype[Any] = np.dtype(np.uint8)
            channels = 3
        else:
            if channels is None or channels <= 0:
                msg = f"latent stores need channels > 0, got {channels}"
                raise ValueError(msg)
            np_dtype = np.dtype(dtype or np.float16)
            if np_dtype.kind != "f":
                msg = f"latent dtype must be floating point, got {np_dtype}"
                raise ValueError(msg)
        if path.exists():
            if not overwrite:
                msg = "store already exists; open it with WindowStore.open or pass overwrite=True"
                raise StoreError(msg, path)
            shutil.rmtree(path)
        root = {"zwsi_store": FORMAT_VERSION, "kind": kind, "channels": channels, "dtype": np_dtype.str}
        group = zarr.open_group(str(path), mode="w-", zarr_format=3, attributes={**(attrs or {}), **root})
        return cls(group, path)

    @classmethod
    def open(cls, path: str | Path, mode: Literal["r", "r+"] = "r+") -> WindowStore:
        """Open an existing store ('r' read-only, 'r+' to resume writing).

        Raises:
            StoreError: no store at `path`.
        """
        path = Path(path)
        if not (path / "zarr.json").is_file():
            msg = "no zarr store here"
            raise StoreError(msg, path)
        return cls(zarr.open_group(str(path), mode=mode, zarr_format=3), path)

    def create_level(
        self,
        level: int,
        shape: tuple[int, int],
        *,
        mpp: float | tuple[float, float],
        grid: tuple[int, int],
        origin: tuple[int, int] = (0, 0),
        chunks: tuple[int, int] | None = None,
        shards: tuple[int, int] | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> LevelInfo:
        """Add a magnification level (idempotent when the same geometry already exists, for resuming).

        Args:
            level: level index (0 = finest, as in a slide pyramid).
            shape: (rows, cols) of the level's array (latent pixels for 'latent', pixels for 'pixel').
            mpp: µm per array pixel.
            grid: (h, w) of a done-mask cell, normally the window stride.
            origin: level-0 slide pixel (x, y) of array pixel (0, 0).
            chunks: (h, w) of a zarr chunk (default 64² for latents, 256² for pixels).
            shards: (h, w) of a shard file, a multiple of chunks (default 8× chunks).
            attrs: further JSON attributes for this level.

        Raises:
            ValueError: non-positive shape/grid/chunks, or shards not a multiple of chunks.
            StoreError: the level exists with a different shape or grid.
        """
        rows, cols = (int(v) for v in shape)
        gh, gw = (int(v) for v in grid)
        if rows <= 0 or cols <= 0 or gh <= 0 or gw <= 0:
            msg = f"shape={shape} and grid={grid} must be positive"
            raise ValueError(msg)
        m = Mpp.of(mpp)
        name = str(int(level))
        if name in self._group:
            info = self.level_info(level)
            if info.shape != (rows, cols) or info.grid != (gh, gw):
                msg = f"level {level} exists with shape {info.shape} grid {info.grid}, not {shape} {grid}"
                raise StoreError(msg, self.path)
            return info
        ch, cw = chunks or ((64, 64) if self.kind == "latent" else (256, 256))
        sh, sw = shards or (ch * 8, cw * 8)
        if ch <= 0 or cw <= 0 or sh % ch or sw % cw:
            msg = f"shards={shards or (sh, sw)} must be positive multiples of chunks={chunks or (ch, cw)}"
            raise ValueError(msg)
        sh, sw = min(sh, math.ceil(rows / ch) * ch), min(sw, math.ceil(cols / cw) * cw)
        if self.kind == "latent":
            shp, chk, shd = (self.channels, rows, cols), (self.channels, ch, cw), (self.channels, sh, sw)
        else:
            shp, chk, shd = (rows, cols, 3), (ch, cw, 3), (sh, sw, 3)
        meta = {"mpp": [m.x, m.y], "origin": [int(origin[0]), int(origin[1])], "grid": [gh, gw],
                "shape": [rows, cols], **(attrs or {})}
        sub = self._group.create_group(name, attributes=meta)
        sub.create_array("data", shape=shp, chunks=chk, shards=shd, dtype=self.dtype, fill_value=0)
        gshape = (math.ceil(rows / gh), math.ceil(cols / gw))
        sub.create_array("done", shape=gshape, chunks=(min(gshape[0], 256), min(gshape[1], 256)), dtype=bool,
                         fill_value=False)
        return self.level_info(level)

    # --- metadata --------------------------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        """The store's attributes (a copy)."""
        return dict(self._group.attrs)

    def update_attrs(self, **values: Any) -> None:
        """Merge attributes into the store's zarr.json (written atomically by zarr's local store)."""
        reserved = {"zwsi_store", "kind", "channels", "dtype"} & set(values)
        if reserved:
            msg = f"attributes {sorted(reserved)} are fixed at creation"
            raise ValueError(msg)
        self._group.attrs.update(values)

    @property
    def levels(self) -> list[int]:
        """Level indices present, ascending."""
        return sorted(int(k) for k in self._group.group_keys())

    def level_info(self, level: int) -> LevelInfo:
        """Geometry of one level.

        Raises:
            StoreError: no such level.
        """
        a: dict[str, Any] = dict(self._level(level).attrs)
        return LevelInfo(level, (int(a["shape"][0]), int(a["shape"][1])), Mpp(*a["mpp"]),
                         (int(a["origin"][0]), int(a["origin"][1])), (int(a["grid"][0]), int(a["grid"][1])))

    def _level(self, level: int) -> zarr.Group:
        name = str(int(level))
        if name not in self._group:
            msg = f"level {level} not in store (levels: {self.levels})"
            raise StoreError(msg, self.path)
        sub = self._group[name]
        assert isinstance(sub, zarr.Group)
        return sub

    def _array(self, level: int, name: str) -> zarr.Array[Any]:
        """A level's ``data`` or ``done`` array."""
        array = self._level(level)[name]
        assert isinstance(array, zarr.Array)
        return array

    # --- windows ---------------------------------------------------------------------------------------------------
    def write_window(self, level: int, row0: int, col0: int, array: NDArray[Any]) -> None:
        """Write one window at (row0, col0) of `level` and mark the grid cells it fully covers as done.

        Args:
            level: store level.
            row0, col0: top-left in the level's array pixels.
            array: latent (C, h, w) or pixel (h, w, 3); cast to the store dtype. Must lie inside the level.

        Raises:
            StoreError: wrong shape/channels, or the window leaves the level.
        """
        info = self.level_info(level)
        arr = np.asarray(array)
        if self.kind == "latent":
            ok = arr.ndim == 3 and arr.shape[0] == self.channels
            h, w = (arr.shape[1], arr.shape[2]) if ok else (0, 0)
        else:
            ok = arr.ndim == 3 and arr.shape[2] == 3
            h, w = (arr.shape[0], arr.shape[1]) if ok else (0, 0)
        if not ok or h == 0 or w == 0:
            want = f"({self.channels}, h, w)" if self.kind == "latent" else "(h, w, 3)"
            msg = f"{self.kind} window must be {want}, got shape {arr.shape}"
            raise StoreError(msg, self.path)
        rows, cols = info.shape
        if row0 < 0 or col0 < 0 or row0 + h > rows or col0 + w > cols:
            msg = f"window rows {row0}:{row0 + h}, cols {col0}:{col0 + w} leaves level {level} of shape {info.shape}"
            raise StoreError(msg, self.path)
        if self.kind == "pixel" and arr.dtype != np.uint8:
            msg = f"pixel windows must be uint8, got {arr.dtype}"
            raise StoreError(msg, self.path)
        data = self._array(level, "data")
        if self.kind == "latent":
            data[:, row0 : row0 + h, col0 : col0 + w] = arr.astype(self.dtype, copy=False)
        else:
            data[row0 : row0 + h, col0 : col0 + w] = arr
        (i0, i1), (j0, j1) = _covered(row0, h, info.grid[0], rows), _covered(col0, w, info.grid[1], cols)
        if i1 > i0 and j1 > j0:
            self._array(level, "done")[i0:i1, j0:j1] = True

    def read(self, level: int, rows: tuple[int, int] | slice, cols: tuple[int, int] | slice) -> NDArray[Any]:
        """Read rows [r0, r1) × cols [c0, c1) of a level: latent (C, h, w) or pixel (h, w, 3).

        Unwritten pixels read as 0; check `done` for what has been written.

        Raises:
            StoreError: the span is empty or leaves the level.
        """
        info = self.level_info(level)
        r0, r1 = _span(rows, "rows")
        c0, c1 = _span(cols, "cols")
        if not (0 <= r0 < r1 <= info.shape[0] and 0 <= c0 < c1 <= info.shape[1]):
            msg = f"read rows {r0}:{r1}, cols {c0}:{c1} is empty or leaves level {level} of shape {info.shape}"
            raise StoreError(msg, self.path)
        data = self._array(level, "data")
        if self.kind == "latent":
            return np.asarray(data[:, r0:r1, c0:c1])
        return np.asarray(data[r0:r1, c0:c1])

    def done(self, level: int) -> NDArray[np.bool_]:
        """The done mask of a level, (grid rows, grid cols) bool."""
        return np.asarray(self._array(level, "done")[...])

    def pending(self, level: int) -> list[tuple[int, int]]:
        """(row0, col0) of every grid cell not yet written, row-major: what a resumed writer still has to do."""
        info = self.level_info(level)
        gi, gj = np.nonzero(~self.done(level))
        return [(int(i) * info.grid[0], int(j) * info.grid[1]) for i, j in zip(gi, gj)]

    def pixel_source(self, level: int = 0) -> StoreSource:
        """A `write_pyramid` tile source over a pixel level (its array pixel (0, 0) becomes the TIFF's origin).

        Raises:
            StoreError: this is a latent store.
        """
        if self.kind != "pixel":
            msg = "only pixel stores can feed write_pyramid"
            raise StoreError(msg, self.path)
        return StoreSource(self, level)


@dataclass(frozen=True)
class StoreSource:
    """Level of a pixel `WindowStore` as a `write_pyramid` tile source."""

    store: WindowStore
    level: int

    @property
    def size(self) -> Size:
        rows, cols = self.store.level_info(self.level).shape
        return cols, rows

    @property
    def mpp(self) -> Mpp:
        return self.store.level_info(self.level).mpp

    def __call__(self, x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        return self.store.read(self.level, (y, y + h), (x, x + w))


def _covered(start: int, length: int, cell: int, limit: int) -> tuple[int, int]:
    """Grid cells [i0, i1) whose in-bounds extent lies wholly in [start, start + length)."""
    i0 = math.ceil(start / cell)
    end = start + length
    i1 = (limit + cell - 1) // cell if end >= limit else end // cell
    return i0, max(i0, i1)
