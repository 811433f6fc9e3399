"""Seeded mutations of real slides, run through every reader path; each case is a named error or a correct read.

Mutations: a TIFF tag of an image directory (width, length, tile size, bits, samples, compression, photometric)
set to a hostile value; one tile offset or byte count pointed elsewhere; random bytes of tile data flipped; the file
truncated. Reader paths: `open_slide` with each backend and auto, properties, associated images, `read_region` on
every level (corners and centre), `read_region_mpp`, `get_thumbnail`.

`run_cases` runs in a child process with its address space capped (`RLIMIT_AS`), so an allocation beyond the bound
is a MemoryError, reported as a failure; a crash of the child is reported for its case and the next case continues
in a fresh child. Outcomes: ``ok`` (the reads returned arrays of the asked shape), ``error:<SlideError class>``
(a named error), ``bug:<type>: <message>`` (anything else, a failure).
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import tifffile

TAGS = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 259: "Compression", 262: "Photometric",
        277: "SamplesPerPixel", 322: "TileWidth", 323: "TileLength", 278: "RowsPerStrip"}
HOSTILE = (0, 1, 3, 255, 65535, 2**31 - 1, 2**32 - 1)
MEMORY_LIMIT = 6 << 30  # address space of the child (the libraries alone take ~1.5 GB of it)


def _tag_sites(data: bytes) -> list[tuple[int, int, int, str]]:
    """(value offset, byte size, page, tag name) of the mutable tags, and of tile offset/byte-count entries."""
    sites = []
    from io import BytesIO

    with tifffile.TiffFile(BytesIO(data)) as tf:
        for page in tf.pages:
            for tag in page.tags:
                size = tifffile.TIFF.DATA_FORMATS[tag.dtype][-1:]
                itemsize = struct.calcsize("<" + size)
                if tag.code in TAGS and tag.count == 1:
                    sites.append((tag.valueoffset, itemsize, page.index, TAGS[tag.code]))
                elif tag.code in (324, 325, 273, 279):
                    name = {324: "TileOffsets", 325: "TileByteCounts", 273: "StripOffsets", 279: "StripByteCounts"}
                    for k in range(min(tag.count, 4096)):
                        sites.append((tag.valueoffset + k * itemsize, itemsize, page.index, name[tag.code]))
    return sites


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One seeded mutation of a TIFF's bytes, and its description."""
    kind = rng.choice(("tag", "tag", "offset", "bytes", "truncate"))
    buf = bytearray(data)
    if kind == "truncate":
        cut = rng.randrange(8, len(data))
        return bytes(buf[:cut]), f"truncated at byte {cut} of {len(data)}"
    if kind == "bytes":
        start = rng.randrange(len(data) // 8, len(data))
        for i in range(start, min(len(data), start + rng.randint(1, 64))):
            buf[i] = rng.randrange(256)
        return bytes(buf), f"bytes from {start} randomised"
    sites = _tag_sites(data)
    if kind == "tag":
        sites = [s for s in sites if s[3] in TAGS.values()]
    else:
        sites = [s for s in sites if s[3] not in TAGS.values()]
    offset, size, page, name = rng.choice(sites)
    fmt = {2: "<H", 4: "<I", 8: "<Q"}[size]
    limit = 2 ** (8 * size) - 1
    if kind == "offset":
        value = rng.choice((0, len(data) - 1, len(data) + 10_000, limit, rng.randrange(len(data))))
    else:
        value = rng.choice([v for v in HOSTILE if v <= limit] + [rng.randrange(min(limit, 1 << 20))])
    struct.pack_into(fmt, buf, offset, min(value, limit))
    return bytes(buf), f"page {page} {name} = {min(value, limit)}"


def read_everything(path: Path) -> None:
    """Every reader path on one file; raises whatever the readers raise."""
    import slide_io

    for backend in ("auto", "tiffslide", "openslide"):
        try:
            slide = slide_io.open_slide(path, backend)  # type: ignore[arg-type]
        except slide_io.UnsupportedSlideError:
            continue
        with slide:
            dict(slide.properties)
            for img in slide.associated_images.values():
                img.load()
            for level, (w, h) in enumerate(slide.level_dimensions):
                ds = slide.level_downsamples[level]
                for fx, fy in ((0, 0), (0.5, 0.5), (1, 1)):
                    x, y = int(fx * max(w - 64, 0) * ds), int(fy * max(h - 64, 0) * ds)
                    out = slide.read_region((x, y), level, (64, 64), as_array=True)
                    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
            if slide.mpp_or_none is not None:
                out = slide.read_region_mpp((0, 0), slide.mpp.x * 3, (100, 80))
                assert out.shape == (80, 100, 3)
            thumb = slide.get_thumbnail((128, 128))
            assert max(thumb.size) <= 128


def run_one(path: Path) -> str:
    import slide_io

    try:
        read_everything(path)
        return "ok"
    except slide_io.SlideError as exc:
        return f"error:{type(exc).__name__}"
    except MemoryError as exc:
        return f"bug:MemoryError: {exc}"
    except Exception as exc:  # noqa: BLE001 - every other exception is a finding
        tb = traceback.format_exc(limit=4).strip().splitlines()
        return f"bug:{type(exc).__name__}: {str(exc)[:200]} | {' / '.join(tb[-4:])[:600]}"


def child(sources: list[str], seed: int, first: int, count: int, folder: str) -> None:
    """Run cases [first, first + count) and print one JSON line per case (flushed, so a crash loses none)."""
    import logging
    import resource

    logging.disable(logging.WARNING)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    originals = [Path(s).read_bytes() for s in sources]
    for case in range(first, first + count):
        rng = random.Random(f"{seed}-{case}")
        k = case % len(sources)
        data, what = mutate(originals[k], rng)
        path = Path(folder) / f"case{case}{Path(sources[k]).suffix}"
        path.write_bytes(data)
        print(json.dumps({"case": case, "source": Path(sources[k]).name, "mutation": what, "outcome": "started"}),
              flush=True)
        outcome = run_one(path)
        path.unlink()
        print(json.dumps({"case": case, "source": Path(sources[k]).name, "mutation": what, "outcome": outcome}),
              flush=True)


def run_cases(sources: list[Path], n: int, seed: int, folder: Path) -> list[dict[str, str]]:
    """All `n` cases, in children that restart after a crash; one result dict per case."""
    results: dict[int, dict[str, str]] = {}
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    case = 0
    while case < n:
        code = (f"from tests.slide_io.fuzz_slides import child; child({[str(s) for s in sources]!r}, {seed}, "
                f"{case}, {n - case}, {str(folder)!r})")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo,
                              timeout=3600)
        last = None
        for line in done.stdout.splitlines():
            item = json.loads(line)
            last = item
            if item["outcome"] != "started":
                results[item["case"]] = item
        if last is not None and last["outcome"] == "started":  # the child died in this case
            results[last["case"]] = dict(last, outcome=f"bug:crash (exit {done.returncode}) {done.stderr[-300:]}")
            case = last["case"] + 1
        elif done.returncode != 0 and (last is None or last["case"] < n - 1):
            raise RuntimeError(f"fuzz child failed before any case: {done.stderr[-2000:]}")
        else:
            case = n
    return [results[i] for i in sorted(results)]
