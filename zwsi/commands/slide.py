"""`zwsi slide info|thumbnail|convert`: inspect a whole-slide image, save its thumbnail, re-pyramid it.

    zwsi slide info CMU-1-Small-Region.svs [--json] [--backend auto|openslide|tiffslide]
    zwsi slide thumbnail SLIDE OUT.png [--size 1024]
    zwsi slide convert IN OUT.svs [--format svs|ome-tiff|tiff] [--compression jpeg|deflate|lzw|zstd|none] [--quality 90]
        [--tile-size 256]                                                  # --ome = --format ome-tiff

Only slide_io is imported (never torch). Slide errors print one line naming the file and the bad value and exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from slide_io.dihedral import output_shape


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `zwsi slide info`, `zwsi slide thumbnail` and `zwsi slide convert`."""
    slide = subparsers.add_parser("slide", help="inspect, thumbnail and convert whole-slide images")
    sub = slide.add_subparsers(dest="slide_command", metavar="SUBCOMMAND")
    backend = {"choices": ("auto", "openslide", "tiffslide"), "default": "auto",
               "help": "reader backend (default auto: OME-TIFF via tiffslide, else openslide, else tiffslide)"}

    info = sub.add_parser("info", help="vendor, levels, µm/px, associated images, provenance")
    info.add_argument("path", type=Path)
    info.add_argument("--backend", **backend)
    info.add_argument("--mpp", type=float, default=None, help="µm/px to assume when the file stores none")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=run_info)

    thumb = sub.add_parser("thumbnail", help="save an RGB thumbnail (PNG/JPEG by extension)")
    thumb.add_argument("path", type=Path)
    thumb.add_argument("out", type=Path)
    thumb.add_argument("--size", type=int, default=1024, help="longest edge in pixels (default 1024)")
    thumb.add_argument("--backend", **backend)
    thumb.set_defaults(func=run_thumbnail)

    conv = sub.add_parser("convert", help="re-pyramid any readable slide into a Z-WSI pyramid (SVS, OME-TIFF or "
                          "generic TIFF), keeping µm/px")
    conv.add_argument("input", type=Path)
    conv.add_argument("output", type=Path)
    conv.add_argument("--compression", choices=("jpeg", "deflate", "lzw", "zstd", "none"), default="jpeg")
    conv.add_argument("--quality", type=int, default=90, help="JPEG quality 1-100 (default 90)")
    conv.add_argument("--tile-size", type=int, default=256)
    container = conv.add_mutually_exclusive_group()
    container.add_argument("--format", choices=("svs", "ome-tiff", "tiff"), default="svs",
                           help="svs (default: Aperio layout; output .svs/.tif/.tiff), ome-tiff (Bio-Formats/QuPath; "
                           ".ome.tif/.ome.tiff) or tiff (generic pyramidal TIFF; .tif/.tiff)")
    container.add_argument("--ome", dest="format", action="store_const", const="ome-tiff",
                           help="the same as --format ome-tiff")
    conv.add_argument("--mpp", type=float, default=None, help="µm/px to use when the input stores none")
    conv.add_argument("--region", default=None, metavar="X,Y,W,H",
                      help="only this level-0 region (pixels, OpenSlide's x, y from the top-left): e.g. to hold out "
                      "part of a slide from training")
    conv.add_argument("--dihedral", type=int, default=0, choices=range(8), metavar="K",
                      help="write the slide turned K %% 4 quarter turns counter-clockwise, then flipped left-right "
                      "when K >= 4 (0..7; training augmentation: histology has no preferred orientation)")
    conv.add_argument("--pad", default=None, metavar="TOP,LEFT,BOTTOM,RIGHT",
                      help="add a margin of blank glass around the (region of the) slide, in level-0 pixels, after "
                      "--dihedral: e.g. to place a tissue crop at several positions of a slide-sized layout")
    conv.add_argument("--pad-rgb", default="246,243,243", metavar="R,G,B",
                      help="the glass colour of --pad (default 246,243,243: the CMU slide's median glass)")
    conv.add_argument("--backend", **backend)
    conv.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    conv.set_defaults(func=run_convert)
    slide.set_defaults(func=lambda args: slide.print_help() or 0)


def _fail(exc: Exception) -> int:
    print(f"zwsi slide: {type(exc).__name__}: {exc}", file=sys.stderr)
    return 2


def slide_info(slide: Any) -> dict[str, Any]:
    """The facts `zwsi slide info` prints, as a JSON-ready dict."""
    mpp = slide.mpp_or_none
    return {
        "path": str(slide.path),
        "vendor": slide.vendor,
        "backend": slide.backend,
        "dimensions": list(slide.dimensions),
        "level_count": slide.level_count,
        "levels": [
            {"level": k, "dimensions": list(d), "downsample": ds,
             "mpp": None if mpp is None else [mpp.x * ds, mpp.y * ds]}
            for k, (d, ds) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))
        ],
        "mpp": None if mpp is None else [mpp.x, mpp.y],
        "objective_power": slide.objective_power,
        "associated_images": {k: list(v.size) for k, v in slide.associated_images.items()},
        "synthetic": slide.is_synthetic,
        "provenance": None if slide.provenance is None else json.loads(slide.provenance.to_json()),
    }


def run_info(args: argparse.Namespace) -> int:
    import slide_io

    try:
        with slide_io.open_slide(args.path, args.backend, mpp=args.mpp) as slide:
            info = slide_info(slide)
    except slide_io.SlideError as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    mpp = info["mpp"]
    print(f"{info['path']}")
    print(f"  vendor     {info['vendor']} (read with {info['backend']})")
    print(f"  mpp        {'none stored' if mpp is None else f'{mpp[0]:.4g} x {mpp[1]:.4g} µm/px'}")
    power = info["objective_power"]
    print(f"  objective  {'none stored' if power is None else f'{power:g}x'}")
    if info["synthetic"]:
        print("  SYNTHETIC  generated by Z-WSI - not a patient slide")
    for lvl in info["levels"]:
        w, h = lvl["dimensions"]
        m = "" if lvl["mpp"] is None else f"  {lvl['mpp'][0]:.4g} µm/px"
        print(f"  level {lvl['level']:<2} {w:>7} x {h:<7} downsample {lvl['downsample']:<8.4g}{m}")
    assoc = ", ".join(f"{k} {w}x{h}" for k, (w, h) in info["associated_images"].items()) or "none"
    print(f"  associated {assoc}")
    if info["provenance"] is not None:
        print(f"  provenance {json.dumps(info['provenance'], sort_keys=True)}")
    return 0


def run_thumbnail(args: argparse.Namespace) -> int:
    from PIL import Image

    import slide_io
    from slide_io.cleanup import partial_path, remove_stale

    if args.size <= 0:
        return _fail(ValueError(f"--size={args.size} must be positive"))
    Image.init()
    if args.out.suffix.lower() not in Image.EXTENSION:
        return _fail(ValueError(f"output {args.out.name!r}: unknown image extension {args.out.suffix!r}; expected "
                                f".png, .jpg, .tif, .webp, ..."))
    if not args.out.parent.is_dir():
        return _fail(ValueError(f"output folder {args.out.parent} does not exist or is not a folder"))
    try:
        with slide_io.open_slide(args.path, args.backend) as slide:
            thumb = slide.get_thumbnail((args.size, args.size))
    except slide_io.SlideError as exc:
        return _fail(exc)
    remove_stale(args.out.parent, args.out.name)
    tmp = partial_path(args.out, args.out.suffix)
    try:
        thumb.save(tmp, format=Image.EXTENSION[args.out.suffix.lower()])
        tmp.replace(args.out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"{args.out} {thumb.size[0]}x{thumb.size[1]}")
    return 0


def _region(text: str, dimensions: tuple[int, int]) -> tuple[int, int, int, int]:
    """``X,Y,W,H`` (level-0 pixels) inside a slide of ``dimensions`` (width, height).

    Raises:
        ValueError: not four integers, or a box that is empty or leaves the slide.
    """
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--region {text!r} must be four integers X,Y,W,H (level-0 pixels)") from None
    width, height = dimensions
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"--region {text!r} must be a non-empty box inside the slide's {width} x {height} level 0")
    return x, y, w, h


def _transformed_source(slide: Any, box: tuple[int, int, int, int], k: int) -> Any:
    """A tile reader of dihedral transform ``k`` of a level-0 ``box`` (x, y, w, h): each output tile reads the input
    box it comes from (`slide_io.dihedral.source_box`) and transforms it."""
    from slide_io.dihedral import dihedral, source_box

    x0, y0, w, h = box

    def read(x: int, y: int, tw: int, th: int) -> Any:
        (r0, r1), (c0, c1) = source_box((y, y + th), (x, x + tw), k, (h, w))
        return dihedral(slide.read_region((x0 + c0, y0 + r0), 0, (c1 - c0, r1 - r0), as_array=True), k)

    return read


def _ints(text: str, n: int, flag: str) -> tuple[int, ...]:
    """``n`` comma-separated non-negative integers."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or min(values) < 0:
        raise ValueError(f"{flag} {text!r} must be {n} comma-separated non-negative integers")
    return values


def _padded(read: Any, size: tuple[int, int], pad: tuple[int, ...], rgb: tuple[int, ...]) -> Any:
    """A tile reader of ``read``'s image (``size`` = width, height) inside a margin ``pad`` (top, left, bottom, right)
    of colour ``rgb``."""
    import numpy as np

    top, left = pad[0], pad[1]
    w, h = size

    def tile(x: int, y: int, tw: int, th: int) -> Any:
        out = np.empty((th, tw, 3), np.uint8)
        out[:] = rgb
        c0, c1 = max(x, left), min(x + tw, left + w)
        r0, r1 = max(y, top), min(y + th, top + h)
        if c1 > c0 and r1 > r0:
            out[r0 - y : r1 - y, c0 - x : c1 - x] = read(c0 - left, r0 - top, c1 - c0, r1 - r0)
        return out

    return tile


def run_convert(args: argparse.Namespace) -> int:
    import slide_io

    try:
        with slide_io.open_slide(args.input, args.backend, mpp=args.mpp) as slide:
            provenance = slide.provenance or slide_io.Provenance(
                synthetic=False,
                extra={"converted_from": args.input.name, "source_vendor": slide.vendor,
                       "source_sha256": slide_io.sha256_file(args.input)},
            )
            source, size = slide, None
            if args.region is not None or args.dihedral or args.pad is not None:
                x0, y0, w, h = _region(args.region, slide.dimensions) if args.region else (0, 0, *slide.dimensions)
                if args.region is not None:
                    provenance.extra["region_level0"] = [x0, y0, w, h]
                if args.dihedral:
                    provenance.extra["dihedral"] = args.dihedral
                source = _transformed_source(slide, (x0, y0, w, h), args.dihedral)
                size = output_shape((h, w), args.dihedral)[::-1]
                if args.pad is not None:
                    pad, rgb = _ints(args.pad, 4, "--pad"), _ints(args.pad_rgb, 3, "--pad-rgb")
                    provenance.extra["pad_level0"] = list(pad)
                    source, size = _padded(source, size, pad, rgb), (size[0] + pad[1] + pad[3], size[1] + pad[0] + pad[2])
            out = slide_io.write_pyramid(
                args.output, source, size=size, mpp=None if size is None else slide.mpp.x,
                compression=args.compression, quality=args.quality, tile_size=args.tile_size,
                provenance=provenance, format=args.format, progress=not args.no_progress,
            )
    except (slide_io.SlideError, ValueError) as exc:
        return _fail(exc)
    print(f"{out}")
    return 0
