"""slide_io reader: OpenSlide-compatible API over openslide and tiffslide, checked against both libraries directly."""

from __future__ import annotations

import numpy as np
import openslide
import pytest
import tiffslide

import slide_io
from slide_io import (
    InvalidRegionError,
    MissingMppError,
    NotASlideError,
    SlideLevelError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedSlideError,
)
from tests.slide_io.conftest import pattern, write_tifffile_pyramid


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_cmu_svs_matches_the_library_directly(cmu, backend):
    with slide_io.open_slide(cmu, backend) as slide:
        assert slide.vendor == "aperio"
        assert slide.dimensions == (2220, 2967) and slide.level_count == 1
        assert slide.mpp == (0.499, 0.499)
        assert {"label", "macro", "thumbnail"} <= set(slide.associated_images)
        ours = slide.read_region((300, 700), 0, (400, 300), as_array=True)
        if backend == "openslide":
            ref = np.asarray(openslide.OpenSlide(str(cmu)).read_region((300, 700), 0, (400, 300)))[..., :3]
        else:
            ref = tiffslide.TiffSlide(str(cmu)).read_region((300, 700), 0, (400, 300), as_array=True)
        assert ours.shape == (300, 400, 3) and ours.dtype == np.uint8
        np.testing.assert_array_equal(ours, ref)


def test_default_read_region_is_openslides_rgba_image(cmu):
    with slide_io.open_slide(cmu) as slide:
        img = slide.read_region((10, 20), 0, (64, 32))
    ref = openslide.OpenSlide(str(cmu)).read_region((10, 20), 0, (64, 32))
    assert img.mode == "RGBA" and img.size == (64, 32)
    np.testing.assert_array_equal(np.asarray(img), np.asarray(ref))


def test_ome_tiff_goes_to_tiffslide_with_mpp_from_the_file(ome):
    with slide_io.open_slide(ome) as slide:
        assert slide.backend == "tiffslide" and slide.vendor == "ome-tiff"
        assert slide.dimensions == (1101, 1101)
        assert slide.mpp.x == pytest.approx(0.2271, abs=1e-4)
        ref = tiffslide.TiffSlide(str(ome)).read_region((100, 200), 0, (256, 128), as_array=True)
        np.testing.assert_array_equal(slide.read_region((100, 200), 0, (256, 128), as_array=True), ref)


def test_ome_tiff_through_openslide_is_an_unsupported_vendor(ome):
    with pytest.raises(UnsupportedSlideError, match=r"openslide cannot read this format.*OS-1-detail"):
        slide_io.open_slide(ome, "openslide")


@pytest.mark.parametrize("backend", ["auto", "openslide", "tiffslide"])
def test_generated_pyramid_levels_and_pixels(pyramid, backend):
    path, arrays = pyramid
    with slide_io.open_slide(path, backend) as slide:
        assert slide.level_dimensions == ((512, 384), (256, 192), (128, 96))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == (0.25, 0.25) and slide.level_mpp(2) == (1.0, 1.0)
        for level in range(3):
            np.testing.assert_array_equal(slide.read_region((0, 0), level, slide.level_dimensions[level],
                                                            as_array=True), arrays[level])
        np.testing.assert_array_equal(slide.read_region((200, 100), 1, (50, 40), as_array=True),
                                      arrays[1][50:90, 100:150])
        assert slide.get_best_level_for_downsample(3.0) == 1
        assert slide.get_best_level_for_downsample(100) == 2
        assert slide.get_best_level_for_downsample(0.5) == 0


def test_overhanging_region_is_padded_white_in_arrays_and_transparent_in_rgba(pyramid):
    path, arrays = pyramid
    with slide_io.open_slide(path) as slide:
        arr = slide.read_region((500, -10), 0, (20, 30), as_array=True)
        rgba = np.asarray(slide.read_region((500, -10), 0, (20, 30)))
    np.testing.assert_array_equal(arr[10:, :12], arrays[0][:20, 500:512])
    assert (arr[:10] == 255).all() and (arr[:, 12:] == 255).all()
    assert (rgba[:10, :, 3] == 0).all() and (rgba[10:, :12, 3] == 255).all()


def test_read_region_mpp_exact_at_a_level_and_resampled_between(pyramid):
    path, arrays = pyramid
    with slide_io.open_slide(path) as slide:
        exact = slide.read_region_mpp((64, 32), 0.5, (100, 60))
        np.testing.assert_array_equal(exact, arrays[1][16:76, 32:132])
        between = slide.read_region_mpp((0, 0), 0.75, (100, 100))  # from level 1 (0.5 µm/px), shrunk by 1.5
    assert between.shape == (100, 100, 3)
    ref = np.asarray(slide_io.reader.Image.fromarray(arrays[1][:150, :150]).resize((100, 100)))
    assert np.abs(between.astype(int) - ref).mean() < 3


def test_missing_mpp_is_an_error_unless_supplied(tmp_path):
    path = tmp_path / "nompp.tif"
    write_tifffile_pyramid(path, pattern(256, 256), 2, None, "zlib")
    with slide_io.open_slide(path) as slide:
        assert slide.mpp_or_none is None
        with pytest.raises(MissingMppError, match=r"stores no µm/px.*nompp.tif"):
            _ = slide.mpp
        with pytest.raises(MissingMppError, match="nompp.tif"):
            slide.read_region_mpp((0, 0), 1.0, (10, 10))
    with slide_io.open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == (0.5, 0.5)
        assert slide.read_region_mpp((0, 0), 1.0, (128, 128)).shape == (128, 128, 3)


def test_bad_regions_and_levels_name_the_value(pyramid):
    path, _ = pyramid
    with slide_io.open_slide(path) as slide:
        with pytest.raises(InvalidRegionError, match=r"size=\(0, 10\) must be positive.*pyramid.tif"):
            slide.read_region((0, 0), 0, (0, 10))
        with pytest.raises(InvalidRegionError, match=r"size=\(5, -3\) must be positive"):
            slide.read_region((0, 0), 0, (5, -3))
        with pytest.raises(InvalidRegionError, match=r"location=\(600, 0\).*wholly outside"):
            slide.read_region((600, 0), 0, (10, 10))
        with pytest.raises(InvalidRegionError, match=r"wholly outside"):
            slide.read_region((-50, -50), 0, (50, 50))
        with pytest.raises(SlideLevelError, match=r"level=3 out of range\(0, 3\)"):
            slide.read_region((0, 0), 3, (10, 10))
        with pytest.raises(ValueError, match=r"mpp must be > 0 µm/px, got -1"):
            slide.read_region_mpp((0, 0), -1, (10, 10))
    with pytest.raises(ValueError, match="closed slide"):
        slide.read_region((0, 0), 0, (10, 10))


def test_bad_files_raise_named_errors(tmp_path, pyramid):
    with pytest.raises(SlideNotFoundError, match=r"no such slide file.*missing.svs"):
        slide_io.open_slide(tmp_path / "missing.svs")
    (tmp_path / "empty.tif").write_bytes(b"")
    with pytest.raises(NotASlideError, match=r"empty file.*empty.tif"):
        slide_io.open_slide(tmp_path / "empty.tif")
    (tmp_path / "notes.txt").write_text("not a slide\n")
    with pytest.raises(NotASlideError, match=r"neither openslide nor tiffslide.*notes.txt"):
        slide_io.open_slide(tmp_path / "notes.txt")
    slide_io.reader.Image.new("RGB", (32, 32)).save(tmp_path / "photo.png")
    with pytest.raises(NotASlideError, match="photo.png"):
        slide_io.open_slide(tmp_path / "photo.png")
    with pytest.raises(ValueError, match=r"backend='vips' is not one of"):
        slide_io.open_slide(pyramid[0], "vips")


def test_truncated_tiff_is_refused_at_open(tmp_path, pyramid):
    data = pyramid[0].read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    for backend in ("auto", "openslide", "tiffslide"):
        with pytest.raises(SlideReadError, match=r"truncated.*cut.tif"):
            slide_io.open_slide(cut, backend)


def test_truncated_real_svs_is_refused(tmp_path, cmu):
    cut = tmp_path / "cut.svs"
    cut.write_bytes(cmu.read_bytes()[:1_500_000])
    with pytest.raises(SlideReadError, match=r"truncated or corrupt: invalid page offset.*cut.svs"):
        slide_io.open_slide(cut)


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_corrupt_tile_raises_on_read(tmp_path, backend):
    import tifffile

    path = tmp_path / "j.tif"
    write_tifffile_pyramid(path, pattern(512, 512), 1, 0.5, "jpeg")
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[0].dataoffsets[5], tf.pages[0].databytecounts[5]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(count)
    path.write_bytes(bytes(data))
    with slide_io.open_slide(path, backend) as slide:
        slide.read_region((0, 0), 0, (128, 128), as_array=True)  # tile 0 is intact
        with pytest.raises(SlideReadError, match=rf"{backend} failed to read region.*j.tif"):
            slide.read_region((0, 0), 0, (512, 512), as_array=True)
