"""The three containers `write_pyramid` writes, and the headers that make each reader see µm/px, objective power,
associated images and the SYNTHETIC flag.

* ``"svs"`` (default): the Aperio layout that OpenSlide's ``aperio`` driver (3.4.1 and 4), tifffile's SVS parser
  (tiffslide) and Bio-Formats' SVSReader read: tiled level 0 whose ImageDescription starts ``Aperio Image Library`` and carries ``|AppMag = 20|MPP = 0.5|``
  and our keys (``Z-WSI``, ``Synthetic``, ``zwsi-provenance``), the stripped thumbnail as the 2nd directory, the
  reduced levels (tiled, NewSubfileType 0), then the stripped label (NewSubfileType 1) and macro (9), whose
  descriptions' second line starts with their name (OpenSlide names them from it).
* ``"ome-tiff"``: OME-TIFF for Bio-Formats / QuPath: reduced levels as SubIFDs of level 0, OME-XML (2016-06) with
  PhysicalSizeX/Y in µm, an Instrument/Objective with NominalMagnification, the provenance in the image
  Description and a MapAnnotation (``synthetic = true`` and every provenance key); thumbnail, label and macro are
  further OME images.
* ``"tiff"``: a generic pyramidal TIFF (levels as top-level directories, NewSubfileType 1 on reduced ones; OpenSlide
  ``generic-tiff``); the provenance is the ImageDescription; thumbnail and label follow, named by their description.

Objective power is derived from µm/px in one place, `objective_power`: 10 / mpp (20× at 0.5 µm/px, 40× at 0.25).
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from slide_io.errors import SlideFormatError
from slide_io.provenance import PROVENANCE_PREFIX, Provenance, software_version
from slide_io.types import Mpp, Size

SlideFormat = Literal["svs", "ome-tiff", "tiff"]
FORMATS: tuple[str, ...] = ("svs", "ome-tiff", "tiff")
DEFAULT_FORMAT: SlideFormat = "svs"
"""The default container: the one every measured reader opens with µm/px, objective power and associated images
(`benchmarks/reader_table.py`, README "Which readers open the output")."""
SUFFIXES: dict[str, tuple[str, ...]] = {
    "svs": (".svs", ".tif", ".tiff"),
    "ome-tiff": (".ome.tif", ".ome.tiff"),
    "tiff": (".tif", ".tiff"),
}
"""File-name endings each format accepts (a ``.ome.tif`` name promises OME-XML, so only ``ome-tiff`` takes it)."""
APERIO_HEADER = "Aperio Image Library"
OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
OME_XSD = Path(__file__).with_name("schemas") / "ome-2016-06.xsd"
"""The OME 2016-06 schema (CC BY 3.0, Open Microscopy Environment), for offline validation in tests/benchmarks."""
OME_ANNOTATION_NAMESPACE = "zwsi.provenance"
_COMPRESSION_NAMES = {"jpeg": "JPEG", "deflate": "Deflate", "lzw": "LZW", "zstd": "ZSTD", "none": "Raw"}


def check_format(value: str) -> SlideFormat:
    """`value` when it names a container.

    Raises:
        SlideFormatError: an unknown name (a ValueError; the message lists the formats).
    """
    if value not in FORMATS:
        msg = f"format={value!r} is not one of {FORMATS}"
        raise SlideFormatError(msg)
    return value  # type: ignore[return-value]  # checked against FORMATS above


def check_suffix(path: Path, slide_format: str) -> None:
    """Refuse a file name whose ending does not fit `slide_format` (before any work).

    Raises:
        SlideFormatError: an unknown format, or a name that does not end in one of `SUFFIXES[slide_format]` (a
            ValueError).
    """
    check_format(slide_format)
    name = path.name.lower()
    expected = SUFFIXES[slide_format]
    is_ome_name = name.endswith(SUFFIXES["ome-tiff"])
    if not name.endswith(expected) or (slide_format != "ome-tiff" and is_ome_name):
        hint = " (a .ome.tif name promises OME-XML: use format 'ome-tiff')" if is_ome_name else ""
        msg = (f"output {path.name!r} does not fit format {slide_format!r}: expected a name ending in "
               f"{', '.join(expected)}{hint}")
        raise SlideFormatError(msg, path)


def objective_power(mpp: float) -> int:
    """The objective power a scanner reports at `mpp` µm/px: 10 / mpp, rounded (20 at 0.5, 40 at 0.25), at least 1.

    Readers want an integer (OpenSlide's ``aperio.AppMag`` → ``openslide.objective-power`` takes integers only).
    """
    if not mpp > 0:
        msg = f"mpp={mpp!r} must be > 0"
        raise ValueError(msg)
    return max(1, round(10.0 / mpp))


# --- svs -------------------------------------------------------------------------------------------------------------
def svs_description(size: Size, tile: int, mpp: Mpp, compression: str, quality: int, provenance: Provenance) -> str:
    """Level 0's Aperio ImageDescription: the header, AppMag, MPP, then the SYNTHETIC banner, the flag and the
    provenance JSON (last, with any ``|`` escaped so that the ``|``-separated fields stay intact). The Aperio MPP
    field holds one value: `mpp.x` (the writer refuses non-square pixels for 'svs').
    """
    w, h = size
    codec = _COMPRESSION_NAMES.get(compression, compression)
    q = f" Q={quality}" if compression == "jpeg" else ""
    header = f"{APERIO_HEADER} - {software_version()}\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) {codec}/RGB{q}"
    banner = provenance.description().splitlines()[0]
    fields = [
        header, f"AppMag = {objective_power(mpp.x)}", f"MPP = {float(mpp.x)!r}", f"Z-WSI = {banner}",
        f"Synthetic = {'true' if provenance.synthetic else 'false'}",
        PROVENANCE_PREFIX + provenance.to_json().replace("|", "\\u007c"),
    ]
    return "|".join(fields)


def svs_associated_description(name: str, size: Size) -> str:
    """An associated image's Aperio description; OpenSlide names the image by the second line's first word.

    The line break is a bare ``\n``: OpenSlide 3.4.1 splits on ``\r`` and ``\n`` alike, so after ``\r\n`` its
    second line is empty and the image is dropped (measured: Debian's 3.4.1 then lists only the thumbnail).
    """
    return f"{APERIO_HEADER} - {software_version()}\n{name} {size[0]}x{size[1]}"


# --- tiff ------------------------------------------------------------------------------------------------------------
def tiff_description(provenance: Provenance) -> str:
    """Level 0's ImageDescription in the generic layout: the banner line and the provenance JSON line."""
    return provenance.description()


# --- ome-tiff --------------------------------------------------------------------------------------------------------
def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _pixels(image: ET.Element, index: int, size: Size, ifd: int, mpp: Mpp | None) -> None:
    attrs = {"ID": f"Pixels:{index}", "DimensionOrder": "XYCZT", "Type": "uint8", "SizeX": str(size[0]),
             "SizeY": str(size[1]), "SizeC": "3", "SizeZ": "1", "SizeT": "1", "Interleaved": "true",
             "SignificantBits": "8"}
    if mpp is not None:
        attrs |= {"PhysicalSizeX": repr(float(mpp.x)), "PhysicalSizeXUnit": "µm",
                  "PhysicalSizeY": repr(float(mpp.y)), "PhysicalSizeYUnit": "µm"}
    pixels = _sub(image, "Pixels", **attrs)
    _sub(pixels, "Channel", ID=f"Channel:{index}:0", SamplesPerPixel="3")
    _sub(pixels, "TiffData", IFD=str(ifd), PlaneCount="1")


def provenance_map(provenance: Provenance) -> dict[str, str]:
    """The MapAnnotation's key/value pairs: ``synthetic`` then every provenance field that is set (``extra`` as
    JSON)."""
    pairs = {"synthetic": "true" if provenance.synthetic else "false"}
    for key, value in asdict(provenance).items():
        if key == "synthetic" or value is None or value == {}:
            continue
        pairs[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    return pairs


def ome_xml(size: Size, mpp: Mpp, provenance: Provenance, associated: list[tuple[str, Size]]) -> str:
    """The OME-XML (2016-06) of level 0 (IFD 0, reduced levels in its SubIFDs) and the associated images that
    follow it as IFDs 1, 2, ..., with the XML declaration. The unit is a literal "µm", to be stored as UTF-8:
    Bio-Formats 7.3 rejects the file as OME-TIFF when it is a character reference (``&#181;m``; measured)."""
    root = ET.Element("OME", {
        "xmlns": OME_NS, "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
        "xsi:schemaLocation": f"{OME_NS} {OME_NS}/ome.xsd", "UUID": f"urn:uuid:{uuid.uuid4()}",
        "Creator": software_version(),
    })
    instrument = _sub(root, "Instrument", ID="Instrument:0")
    power = objective_power((mpp.x + mpp.y) / 2)
    _sub(instrument, "Objective", ID="Objective:0:0", NominalMagnification=f"{float(power)!r}")
    slide = _sub(root, "Image", ID="Image:0", Name="Z-WSI slide")
    _sub(slide, "Description", provenance.description())
    _sub(slide, "InstrumentRef", ID="Instrument:0")
    _sub(slide, "ObjectiveSettings", ID="Objective:0:0")
    _pixels(slide, 0, size, 0, mpp)
    _sub(slide, "AnnotationRef", ID="Annotation:0")
    for i, (name, assoc_size) in enumerate(associated, start=1):
        _pixels(_sub(root, "Image", ID=f"Image:{i}", Name=name), i, assoc_size, i, None)
    annotations = _sub(root, "StructuredAnnotations")
    mapping = _sub(annotations, "MapAnnotation", ID="Annotation:0", Namespace=OME_ANNOTATION_NAMESPACE)
    _sub(mapping, "Description", "Z-WSI provenance; synthetic=true marks a generated, not scanned, slide")
    value = _sub(mapping, "Value")
    for key, text in provenance_map(provenance).items():
        _sub(value, "M", text, K=key)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
