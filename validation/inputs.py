"""Inputs of a validation run: tiles at one or more magnifications, from slides or from tile images.

A path is a *slide* when it is a whole-slide file (`.svs`, `.ndpi`, …, or a tiled TIFF); slides are read through
`slide_io.open_slide` and cut into `tile_size` tiles at each requested µm/px, at tissue places picked on the
thumbnail. Anything else is *tile images*: a folder (its image files, sorted), a text file listing image paths, or
an image file; each image is cut into non-overlapping `tile_size` crops. Tile images carry no µm/px unless the
caller gives one, so they form one level named "tiles" (or that µm/px).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from validation.stain import tissue_mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide", ".ome.tif", ".ome.tiff")
TILE_LEVEL = "tiles"


def level_key(mpp: float | None) -> str:
    """Name of a magnification level: '0.50 µm/px', or 'tiles' when the µm/px is unknown."""
    return TILE_LEVEL if mpp is None else f"{mpp:.2f} µm/px"


@dataclass
class LevelTiles:
    """Tiles of one magnification: (N, S, S, 3) uint8, where each came from, and their µm/px (None if unknown)."""

    mpp: float | None
    tiles: NDArray[np.uint8]
    origins: list[str]
    locations: list[tuple[int, int]] = field(default_factory=list)  # level-0 (x, y) per tile, for slides


@dataclass
class TileSet:
    """Everything read from one role's inputs ('real', 'synthetic', 'training'): tiles by level, slide paths."""

    role: str
    levels: dict[str, LevelTiles]
    slides: list[Path]
    images: list[Path]


def is_slide(path: Path) -> bool:
    """True for whole-slide files: known slide suffixes, or a TIFF whose first page is tiled."""
    name = path.name.lower()
    if name.endswith(SLIDE_SUFFIXES):
        return True
    if name.endswith((".tif", ".tiff")):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return isinstance(page, tifffile.TiffPage) and bool(page.is_tiled)
        except (tifffile.TiffFileError, OSError, IndexError):
            return False
    return False


def expand_paths(paths: Sequence[str | Path], role: str = "input") -> tuple[list[Path], list[Path]]:
    """Split input paths into (slides, images); folders and .txt lists are expanded; `role` names them in errors.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file that is neither a slide nor an image, or no input at all.
    """
    slides: list[Path] = []
    images: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            msg = f"--{role} {path} does not exist"
            raise FileNotFoundError(msg)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for p in found:
                (slides if is_slide(p) else images).append(p)
        elif path.suffix.lower() == ".txt":
            listed = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            sub_slides, sub_images = expand_paths([path.parent / p for p in listed], role)
            slides += sub_slides
            images += sub_images
        elif is_slide(path):
            slides.append(path)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            images.append(path)
        else:
            msg = f"--{role} {path} is neither a slide nor an image ({', '.join(IMAGE_SUFFIXES + SLIDE_SUFFIXES)})"
            raise ValueError(msg)
    if not slides and not images:
        msg = f"--{role}: no slides or tile images found in {[str(p) for p in paths]}"
        raise ValueError(msg)
    return slides, images


def crop_grid(image: NDArray[np.uint8], tile_size: int) -> list[tuple[int, int, NDArray[np.uint8]]]:
    """Non-overlapping `tile_size` crops of an image, the grid centred; [(x, y, crop)]."""
    h, w = image.shape[:2]
    ny, nx = h // tile_size, w // tile_size
    oy, ox = (h - ny * tile_size) // 2, (w - nx * tile_size) // 2
    return [(ox + c * tile_size, oy + r * tile_size,
             image[oy + r * tile_size:oy + (r + 1) * tile_size, ox + c * tile_size:ox + (c + 1) * tile_size])
            for r in range(ny) for c in range(nx)]


def read_rgb(path: Path) -> NDArray[np.uint8]:
    """An image file as (H, W, 3) uint8 RGB (alpha composited on white)."""
    with Image.open(path) as opened:
        img: Image.Image = opened
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        return np.asarray(img.convert("RGB"))


def tiles_from_images(images: Sequence[Path], tile_size: int, max_tiles: int, seed: int = 0
                      ) -> tuple[NDArray[np.uint8], list[str]]:
    """Crops of tile images (all crops of every image, then a seeded sample of `max_tiles`).

    Raises:
        ValueError: an image smaller than `tile_size`.
    """
    tiles, origins = [], []
    for path in images:
        image = read_rgb(path)
        if min(image.shape[:2]) < tile_size:
            msg = f"tile image {path} is {image.shape[1]}x{image.shape[0]} px, smaller than tile_size={tile_size}"
            raise ValueError(msg)
        for x, y, crop in crop_grid(image, tile_size):
            tiles.append(crop)
            origins.append(f"{path.name} ({x}, {y})")
    keep = _sample(len(tiles), max_tiles, seed)
    return np.stack([tiles[i] for i in keep]), [origins[i] for i in keep]


def _sample(n: int, k: int, seed: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, k, replace=False).tolist())


def thumbnail_tissue(slide: object, side: int = 1024) -> NDArray[np.bool_]:
    """Tissue mask of the slide's thumbnail (longest side `side`)."""
    return tissue_mask(np.asarray(slide.get_thumbnail((side, side))))  # type: ignore[attr-defined]


def tissue_locations(slide: object, mpp: float, tile_size: int, *, min_tissue: float = 0.5, max_tiles: int = 64,
                     seed: int = 0, mask: NDArray[np.bool_] | None = None) -> list[tuple[int, int]]:
    """Level-0 (x, y) of up to `max_tiles` grid tiles at `mpp` with tissue, judged on the slide's thumbnail.

    Args:
        slide: an open `slide_io.Slide`.
        mpp: µm/px of the tiles.
        tile_size: tile side in pixels at `mpp`.
        min_tissue: least tissue fraction a tile must show on the thumbnail.
        max_tiles: most tiles (a seeded sample of the tissue tiles).
        seed: sample seed.
        mask: the slide's `thumbnail_tissue` when already computed.
    """
    base = slide.mpp.x  # type: ignore[attr-defined]
    w0, h0 = slide.dimensions  # type: ignore[attr-defined]
    step0 = tile_size * mpp / base  # level-0 px per tile
    nx, ny = int(w0 // step0), int(h0 // step0)
    if nx == 0 or ny == 0:
        return []
    mask = thumbnail_tissue(slide) if mask is None else mask
    sy, sx = mask.shape[0] / h0, mask.shape[1] / w0
    candidates = []
    for r in range(ny):
        for c in range(nx):
            x0, y0 = c * step0, r * step0
            cell = mask[int(y0 * sy):max(int(y0 * sy) + 1, int((y0 + step0) * sy)),
                        int(x0 * sx):max(int(x0 * sx) + 1, int((x0 + step0) * sx))]
            if cell.size and cell.mean() >= min_tissue:
                candidates.append((round(x0), round(y0)))
    return [candidates[i] for i in _sample(len(candidates), max_tiles, seed)]


def read_tile(slide: object, location: tuple[int, int], mpp: float, tile_size: int) -> NDArray[np.uint8]:
    """One `tile_size` tile at `mpp` whose top-left is the level-0 `location`.

    When `mpp` is an integer multiple of a level's µm/px, the tile is that level's region averaged over
    factor×factor blocks — the way pyramids are built (PIL's box reduce) — so a slide's own pyramid level and a
    resample of its level 0 give the same pixels; otherwise `Slide.read_region_mpp` resamples (Lanczos).
    Without this, a JPEG copy's box-filtered level 1 read 26% less sharp than the Lanczos-resampled original.
    """
    from validation.magnification import downsample_area

    base = slide.mpp.x  # type: ignore[attr-defined]
    level = slide.get_best_level_for_downsample(mpp / base)  # type: ignore[attr-defined]
    factor = mpp / (base * slide.level_downsamples[level])  # type: ignore[attr-defined]
    whole = round(factor)
    if whole >= 1 and abs(factor - whole) < 0.01:
        side = tile_size * whole
        region = slide.read_region(location, level, (side, side), as_array=True)  # type: ignore[attr-defined]
        return region if whole == 1 else downsample_area(region, whole)
    return slide.read_region_mpp(location, mpp, (tile_size, tile_size))  # type: ignore[attr-defined]


def read_slide_tiles(slide: object, locations: Sequence[tuple[int, int]], mpp: float, tile_size: int
                     ) -> NDArray[np.uint8]:
    """Tiles of `tile_size` px at `mpp` whose top-left corners are the level-0 `locations`, (N, S, S, 3)."""
    tiles = [read_tile(slide, loc, mpp, tile_size) for loc in locations]
    return np.stack(tiles) if tiles else np.zeros((0, tile_size, tile_size, 3), np.uint8)


def load_tileset(role: str, paths: Sequence[str | Path], *, mpps: Sequence[float] | None, tile_size: int = 224,
                 max_tiles: int = 64, tile_mpp: float | None = None, seed: int = 0,
                 locations: dict[str, list[tuple[int, int]]] | None = None) -> TileSet:
    """Read one role's tiles at every level.

    Args:
        role: 'real', 'synthetic' or 'training' (used in messages and the report).
        paths: slides, tile-image folders, image files or .txt lists.
        mpps: µm/px levels to cut slides at; None uses 1×, 2× and 4× the first slide's own µm/px.
        tile_size: tile side in pixels.
        max_tiles: most tiles per level (seeded sample).
        tile_mpp: µm/px of tile images, when known (then they join the slide level of that µm/px).
        seed: sampling seed.
        locations: per level, the level-0 tile places to read from the (single) slide instead of sampling them —
            for paired comparisons (a reconstruction read where its original was read).

    Raises:
        ValueError / FileNotFoundError: bad inputs (see `expand_paths`, `tiles_from_images`).
        slide_io.SlideError: a slide that cannot be read; slide_io.MissingMppError: a slide without µm/px.
    """
    import slide_io

    slides, images = expand_paths(paths, role)
    levels: dict[str, LevelTiles] = {}
    for slide_path in slides:
        with slide_io.open_slide(slide_path) as slide:
            ladder = list(mpps) if mpps else [slide.mpp.x * f for f in (1, 2, 4)]
            mask = thumbnail_tissue(slide) if locations is None else None
            for mpp in ladder:
                key = level_key(mpp)
                if locations is not None and key in locations:
                    locs = locations[key]
                else:
                    mask = thumbnail_tissue(slide) if mask is None else mask
                    locs = tissue_locations(slide, mpp, tile_size, max_tiles=max_tiles, seed=seed, mask=mask)
                if not locs:
                    continue
                tiles = read_slide_tiles(slide, locs, mpp, tile_size)
                _append(levels, key, mpp, tiles, [f"{slide_path.name} {loc}" for loc in locs], list(locs))
    if images:
        tiles, origins = tiles_from_images(images, tile_size, max_tiles, seed)
        _append(levels, level_key(tile_mpp), tile_mpp, tiles, origins, [])
    for key, level in levels.items():
        if len(level.tiles) > max_tiles:
            keep = _sample(len(level.tiles), max_tiles, seed)
            levels[key] = LevelTiles(level.mpp, level.tiles[keep], [level.origins[i] for i in keep],
                                     [level.locations[i] for i in keep] if level.locations else [])
    return TileSet(role, levels, slides, images)


def _append(levels: dict[str, LevelTiles], key: str, mpp: float | None, tiles: NDArray[np.uint8],
            origins: list[str], locations: list[tuple[int, int]]) -> None:
    if key in levels:
        old = levels[key]
        levels[key] = LevelTiles(mpp, np.concatenate([old.tiles, tiles]), old.origins + origins,
                                 old.locations + locations)
    else:
        levels[key] = LevelTiles(mpp, tiles, origins, locations)
