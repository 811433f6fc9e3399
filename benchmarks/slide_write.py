"""Benchmark: slide_io.write_pyramid against pyvips' tiffsave(tile=True, pyramid=True), same source, same run.

Each writer runs in its own subprocess, which reports its wall time and its own peak RSS (ru_maxrss), so the two
measurements do not share memory. The tile source is cheap and generated: a 1000² smooth colour texture (a
period that is not a multiple of the tile size, so tiles differ) repeated over the slide; pyvips gets the same
texture through `replicate`. Both write JPEG (4:2:0, the same quality) or the same lossless codec, 256² tiles.

    .venv/bin/python benchmarks/slide_write.py                       # 32,768² vs pyvips, then 100,000² ours only
    .venv/bin/python benchmarks/slide_write.py --sizes 8192 --big 0  # quick look

Needs the `bench` extra (pyvips-binary, pyvips, psutil). Outputs go to a temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEXTURE = 1000
TILE = 256


def texture(seed: int = 0) -> np.ndarray:
    """(1000, 1000, 3) uint8 smooth, periodic colour noise."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    chans = [gaussian_filter(rng.random((TEXTURE, TEXTURE)), 3, mode="wrap") for _ in range(3)]
    tex = np.stack(chans, axis=-1)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    return (60 + tex * 190).astype(np.uint8)


def run_ours(size: int, out: Path, compression: str, quality: int) -> dict[str, float]:
    from slide_io import write_pyramid

    tex = np.pad(texture(), ((0, TILE), (0, TILE), (0, 0)), mode="wrap")

    def source(x: int, y: int, w: int, h: int) -> np.ndarray:
        r, c = y % TEXTURE, x % TEXTURE
        return tex[r : r + h, c : c + w]

    t0 = time.perf_counter()
    write_pyramid(out, source, size=(size, size), mpp=0.25, compression=compression, quality=quality,  # type: ignore[arg-type]
                  tile_size=TILE)
    return {"seconds": time.perf_counter() - t0}


def run_pyvips(size: int, out: Path, compression: str, quality: int) -> dict[str, float]:
    import pyvips

    tex = np.ascontiguousarray(texture())
    img = pyvips.Image.new_from_memory(tex.data, TEXTURE, TEXTURE, 3, "uchar")
    n = size // TEXTURE + 1
    big = img.replicate(n, n).crop(0, 0, size, size)
    opts = {"jpeg": {"compression": "jpeg", "Q": quality},
            "deflate": {"compression": "deflate"}, "lzw": {"compression": "lzw"}, "none": {"compression": "none"}}
    t0 = time.perf_counter()
    big.tiffsave(str(out), tile=True, pyramid=True, tile_width=TILE, tile_height=TILE,
                 bigtiff=size * size * 3 > 2**31, xres=1e4 / 0.25 / 10, yres=1e4 / 0.25 / 10, resunit="cm",
                 **opts[compression])
    return {"seconds": time.perf_counter() - t0}


def worker(args: argparse.Namespace) -> None:
    out = Path(args.out)
    result = (run_ours if args.worker == "ours" else run_pyvips)(args.size, out, args.compression, args.quality)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["file_mb"] = out.stat().st_size / 2**20
    import openslide

    slide = openslide.OpenSlide(str(out))
    result["levels"] = slide.level_count
    result["mpp"] = float(slide.properties.get("openslide.mpp-x", "nan"))
    slide.close()
    print(json.dumps(result))


def measure(which: str, size: int, compression: str, quality: int, folder: Path) -> dict[str, float]:
    out = folder / f"{which}_{size}.tif"
    cmd = [sys.executable, __file__, "--worker", which, "--size", str(size), "--out", str(out),
           "--compression", compression, "--quality", str(quality)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    out.unlink(missing_ok=True)
    if proc.returncode:
        raise SystemExit(f"{which} {size} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32768], help="square sizes compared with pyvips")
    parser.add_argument("--big", type=int, default=100_000, help="square size written by ours only (0: skip)")
    parser.add_argument("--compression", default="jpeg", choices=("jpeg", "deflate", "lzw", "none"))
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the outputs (default: system temp)")
    parser.add_argument("--worker", choices=("ours", "pyvips"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    import pyvips

    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}, "
          f"libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}; compression {args.compression}"
          f"{' q' + str(args.quality) if args.compression == 'jpeg' else ''}, tiles {TILE}²")
    header = f"{'writer':<14}{'size':>9}{'time s':>9}{'peak RSS MB':>13}{'file MB':>10}{'levels':>8}{'time / pyvips':>15}"
    print(header)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = Path(tmp)
        for size in args.sizes:
            vips = measure("pyvips", size, args.compression, args.quality, folder)
            ours = measure("ours", size, args.compression, args.quality, folder)
            for name, r in (("pyvips", vips), ("write_pyramid", ours)):
                ratio = r["seconds"] / vips["seconds"]
                print(f"{name:<14}{size:>9}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}{r['file_mb']:>10.0f}"
                      f"{r['levels']:>8}{ratio:>15.2f}", flush=True)
        if args.big:
            r = measure("ours", args.big, args.compression, args.quality, folder)
            print(f"{'write_pyramid':<14}{args.big:>9}{r['seconds']:>9.1f}{r['peak_rss_mb']:>13.0f}{r['file_mb']:>10.0f}"
                  f"{r['levels']:>8}{'-':>15}", flush=True)


if __name__ == "__main__":
    main()
