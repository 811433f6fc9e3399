"""write_pyramid's three containers (slide_io.formats) as each reader sees them: levels, µm/px, objective power,
associated images, the SYNTHETIC flag; the OME-XML against the bundled OME 2016-06 schema; names that do not fit."""

from __future__ import annotations

import ctypes.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide
import xmlschema

import slide_io
from slide_io import Provenance, SlideFormatError, objective_power, read_provenance, write_pyramid
from slide_io.formats import OME_XSD, SUFFIXES, check_suffix, provenance_map
from tests.slide_io.conftest import pattern

SIZE = (700, 500)  # levels 700x500, 350x250, 175x125 with 256 px tiles
DIMS = ((700, 500), (350, 250), (175, 125))
NAMES = {"svs": "s.svs", "ome-tiff": "s.ome.tif", "tiff": "s.tiff"}
PROV = Provenance(seed=5, report_sha256="ab" * 32, extra={"planner": {"mpp": 0.5}})


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return pattern(SIZE[1], SIZE[0], seed=2)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, image) -> dict[str, Path]:
    """One small lossless slide per format, 0.5 µm/px."""
    folder = tmp_path_factory.mktemp("formats")
    return {fmt: write_pyramid(folder / name, lambda x, y, w, h: image[y:y + h, x:x + w], size=SIZE, mpp=0.5,
                               compression="deflate", format=fmt, provenance=PROV)
            for fmt, name in NAMES.items()}


# what each reader shows (measured; benchmarks/reader_table.py prints the same for more readers)
OPENSLIDE = {  # format -> (vendor, level count, objective power, associated images)
    "svs": ("aperio", 3, "20", {"thumbnail", "label", "macro"}),
    "ome-tiff": ("generic-tiff", 1, None, set()),  # SubIFDs are invisible to OpenSlide; it has no OME driver
    "tiff": ("generic-tiff", 3, None, set()),
}
TIFFSLIDE = {
    "svs": ("aperio", 3, 20, {"thumbnail", "label", "macro"}),
    "ome-tiff": (None, 3, None, {"thumbnail", "label", "macro"}),
    "tiff": (None, 3, None, {""}),  # tifffile names the stripped pages' series '' (slide_io.Slide reads them by name)
}
OWN = {"svs": (20.0, {"thumbnail", "label", "macro"}), "ome-tiff": (20.0, {"thumbnail", "label", "macro"}),
       "tiff": (None, {"thumbnail", "label"})}


@pytest.mark.parametrize("fmt", list(NAMES))
def test_openslide_sees_levels_mpp_power_and_associated_images(slides, fmt):
    vendor, levels, power, associated = OPENSLIDE[fmt]
    with openslide.OpenSlide(str(slides[fmt])) as o:
        assert o.properties["openslide.vendor"] == vendor and o.level_count == levels
        assert o.level_dimensions == DIMS[:levels]
        assert float(o.properties["openslide.mpp-x"]) == 0.5 and float(o.properties["openslide.mpp-y"]) == 0.5
        assert o.properties.get("openslide.objective-power") == power
        assert set(o.associated_images) == associated
        if fmt == "svs":  # the SYNTHETIC flag as properties of its own
            assert o.properties["aperio.Synthetic"] == "true"
            assert o.properties["aperio.Z-WSI"].startswith("SYNTHETIC whole-slide image")
            assert o.properties["aperio.AppMag"] == "20" and o.properties["aperio.MPP"] == "0.5"


@pytest.mark.parametrize("fmt", list(NAMES))
def test_tiffslide_sees_levels_mpp_power_and_associated_images(slides, fmt):
    vendor, levels, power, associated = TIFFSLIDE[fmt]
    with tiffslide.TiffSlide(str(slides[fmt])) as t:
        assert t.properties["tiffslide.vendor"] == vendor and t.level_count == levels
        assert t.level_dimensions == DIMS
        assert t.properties["tiffslide.mpp-x"] == 0.5 and t.properties["tiffslide.mpp-y"] == 0.5
        assert t.properties["tiffslide.objective-power"] == power
        assert set(t.associated_images) == associated
        if fmt == "svs":
            assert t.properties["aperio.Synthetic"] is True


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
@pytest.mark.parametrize("fmt", list(NAMES))
def test_slide_io_reads_every_format_exactly_with_provenance(slides, image, fmt, backend):
    if fmt == "ome-tiff" and backend == "openslide":
        pytest.skip("OpenSlide sees level 0 of an OME-TIFF only (open_slide's auto backend picks tiffslide)")
    power, associated = OWN[fmt]
    with slide_io.open_slide(slides[fmt], backend) as slide:
        assert slide.level_dimensions == DIMS and slide.mpp == (0.5, 0.5)
        assert slide.objective_power == power
        assert slide.properties.get("zwsi.objective-power") == (None if power is None else "20")
        assert set(slide.associated_images) == associated
        assert slide.is_synthetic and slide.properties["zwsi.synthetic"] == "true" and slide.provenance == PROV
        assert slide.vendor == "zwsi"
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, SIZE, as_array=True), image)
        label = np.asarray(slide.associated_images["label"])
    assert ((label[..., 0] > 150) & (label[..., 1] < 80)).sum() > 500  # the red SYNTHETIC lettering
    assert read_provenance(slides[fmt]) == PROV


def test_auto_backend_per_format(slides):
    backends = {fmt: slide_io.open_slide(path).backend for fmt, path in slides.items()}
    assert backends == {"svs": "openslide", "ome-tiff": "tiffslide", "tiff": "openslide"}


def test_svs_layout_is_aperio_order(slides):
    """Level 0 tiled, thumbnail stripped 2nd, reduced levels tiled with NewSubfileType 0, label (1), macro (9)."""
    with tifffile.TiffFile(slides["svs"]) as tf:
        pages = [(p.is_tiled, p.subfiletype, p.description.split("\n")[-1].split(" ")[0] if not p.is_tiled else "")
                 for p in tf.pages]
        desc = tf.pages.first.description
    assert pages == [(True, 0, ""), (False, 0, "thumbnail"), (True, 0, ""), (True, 0, ""), (False, 1, "label"),
                     (False, 9, "macro")]
    assert desc.startswith("Aperio Image Library") and "|AppMag = 20|MPP = 0.5|" in desc


def test_ome_xml_validates_and_carries_magnification_and_synthetic_annotation(slides):
    with tifffile.TiffFile(slides["ome-tiff"]) as tf:
        xml = tf.ome_metadata
        assert [s.name for s in tf.series] == ["Z-WSI slide", "thumbnail", "label", "macro"]
        assert len(tf.series[0].levels) == 3
    schema = xmlschema.XMLSchema(str(OME_XSD))
    assert [str(e) for e in schema.iter_errors(xml)] == []
    data = schema.to_dict(xml)
    assert data["Instrument"][0]["Objective"][0]["@NominalMagnification"] == 20.0
    pixels = data["Image"][0]["Pixels"]
    assert (pixels["@PhysicalSizeX"], pixels["@PhysicalSizeXUnit"], pixels["@PhysicalSizeY"]) == (0.5, "µm", 0.5)
    pairs = {m["@K"]: m["$"] for m in data["StructuredAnnotations"]["MapAnnotation"][0]["Value"]["M"]}
    assert pairs == provenance_map(PROV) and pairs["synthetic"] == "true" and pairs["seed"] == "5"
    assert pairs["extra"] == '{"planner": {"mpp": 0.5}}'


@pytest.mark.skipif(shutil.which("openslide-show-properties") is None,
                    reason="Debian's openslide-tools (OpenSlide 3.4.1) is not installed")
def test_debian_openslide_3_sees_mpp_and_objective_power_of_svs(slides):
    out = subprocess.run(["openslide-show-properties", str(slides["svs"])], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    props = dict(line.split(": ", 1) for line in out.splitlines() if ": '" in line)
    assert props["openslide.vendor"] == "'aperio'" and props["openslide.level-count"] == "'3'"
    assert props["openslide.mpp-x"] == "'0.5'" and props["openslide.objective-power"] == "'20'"
    assert props["aperio.Synthetic"] == "'true'"
    lib = ctypes.util.find_library("openslide")  # Debian's libopenslide.so.0 (pip's OpenSlide 4 is loaded here)
    if lib is not None:
        names = subprocess.run([sys.executable, "-c", _ASSOCIATED_NAMES, lib, str(slides["svs"])], capture_output=True,
                               text=True, timeout=60, check=True).stdout.split()
        assert sorted(names) == ["label", "macro", "thumbnail"]


_ASSOCIATED_NAMES = """
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.openslide_open.restype, lib.openslide_open.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
lib.openslide_get_associated_image_names.restype = ctypes.POINTER(ctypes.c_char_p)
lib.openslide_get_associated_image_names.argtypes = [ctypes.c_void_p]
names, i = lib.openslide_get_associated_image_names(lib.openslide_open(sys.argv[2].encode())), 0
while names[i]:
    print(names[i].decode()); i += 1
"""


def test_objective_power_is_ten_over_mpp():
    assert [objective_power(m) for m in (0.25, 0.5, 0.499, 1.0, 2.0, 0.227)] == [40, 20, 20, 10, 5, 44]
    with pytest.raises(ValueError, match=r"mpp=0 must be > 0"):
        objective_power(0)


def test_ome_tiff_at_quarter_micron_states_40x(tmp_path):
    out = write_pyramid(tmp_path / "q.ome.tiff", lambda x, y, w, h: np.zeros((h, w, 3), np.uint8), size=(64, 48),
                        mpp=0.25, format="ome-tiff")
    with slide_io.open_slide(out) as slide:
        assert slide.objective_power == 40.0 and slide.mpp == (0.25, 0.25) and slide.level_count == 1


def test_wrong_format_or_name_is_refused_naming_the_value(tmp_path):
    src = lambda x, y, w, h: np.zeros((h, w, 3), np.uint8)  # noqa: E731
    with pytest.raises(SlideFormatError, match=r"format='ndpi' is not one of \('svs', 'ome-tiff', 'tiff'\)"):
        write_pyramid(tmp_path / "x.svs", src, size=(64, 64), mpp=1, format="ndpi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"'x.tif' does not fit format 'ome-tiff': expected a name ending in "
                                         r"\.ome\.tif, \.ome\.tiff"):
        write_pyramid(tmp_path / "x.tif", src, size=(64, 64), mpp=1, format="ome-tiff")
    with pytest.raises(SlideFormatError, match=r"'x.ome.tif' does not fit format 'svs': expected a name ending in "
                                               r"\.svs, \.tif, \.tiff \(a \.ome\.tif name promises OME-XML"):
        write_pyramid(tmp_path / "x.ome.tif", src, size=(64, 64), mpp=1)
    with pytest.raises(SlideFormatError, match=r"'x.svs' does not fit format 'tiff': expected .*\.tif, \.tiff"):
        write_pyramid(tmp_path / "x.svs", src, size=(64, 64), mpp=1, format="tiff")
    with pytest.raises(ValueError, match=r"format 'svs' stores one µm/px .* mpp=\(0.5, 0.25\) is not square"):
        write_pyramid(tmp_path / "x.svs", src, size=(64, 64), mpp=(0.5, 0.25))
    assert list(tmp_path.iterdir()) == []
    for fmt, suffixes in SUFFIXES.items():
        for suffix in suffixes:
            check_suffix(Path("a" + suffix.upper()), fmt)  # every listed ending passes, in any case


def test_convert_format_flag_and_ome_alias(tmp_path, slides, capsys):
    from tests.slide_io.test_slide_cli import main

    ome, alias = tmp_path / "c.ome.tif", tmp_path / "a.ome.tif"
    assert main(["slide", "convert", str(slides["svs"]), str(ome), "--format", "ome-tiff", "--no-progress"]) == 0
    assert main(["slide", "convert", str(slides["svs"]), str(alias), "--ome", "--no-progress"]) == 0
    for path in (ome, alias):
        with tifffile.TiffFile(path) as tf:
            assert tf.is_ome and len(tf.series[0].levels) == 3
    assert main(["slide", "convert", str(slides["svs"]), str(tmp_path / "c.tif"), "--format", "ome-tiff"]) == 2
    assert "'c.tif' does not fit format 'ome-tiff': expected a name ending in .ome.tif, .ome.tiff" in \
        capsys.readouterr().err
    assert not (tmp_path / "c.tif").exists()
