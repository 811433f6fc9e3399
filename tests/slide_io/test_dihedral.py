"""Dihedral transforms of images and slides (slide_io.dihedral, `zwsi slide convert --region/--dihedral`)."""

from __future__ import annotations

import numpy as np
import pytest

import slide_io
from slide_io.dihedral import dihedral, output_shape, source_box


@pytest.mark.parametrize("k", range(8))
def test_every_output_tile_is_the_transform_of_its_source_box(k: int) -> None:
    image = np.arange(7 * 11).reshape(7, 11)
    full = dihedral(image, k)
    assert full.shape == output_shape((7, 11), k)
    for rows, cols in [((0, 3), (0, 4)), ((2, full.shape[0]), (1, full.shape[1])), ((1, 2), (3, 4))]:
        (r0, r1), (c0, c1) = source_box(rows, cols, k, (7, 11))
        np.testing.assert_array_equal(dihedral(image[r0:r1, c0:c1], k), full[rows[0] : rows[1], cols[0] : cols[1]])
    assert np.array_equal(dihedral(image, 4), image[:, ::-1]) and np.array_equal(dihedral(image, 1), np.rot90(image))


def test_k_outside_the_group_is_refused() -> None:
    with pytest.raises(ValueError, match="dihedral k=8 must be an integer 0..7"):
        dihedral(np.zeros((2, 2)), 8)


@pytest.mark.parametrize("k", [0, 3, 6])
def test_convert_writes_a_region_turned_and_flipped_exactly(tmp_path, cmu, k: int) -> None:
    from tests.slide_io.test_slide_cli import main

    out = tmp_path / f"d{k}.tiff"
    args = ["slide", "convert", str(cmu), str(out), "--compression", "deflate", "--no-progress",
            "--region", "100,200,300,500", "--dihedral", str(k)]
    assert main(args) == 0
    with slide_io.open_slide(cmu) as src, slide_io.open_slide(out) as dst:
        want = dihedral(src.read_region((100, 200), 0, (300, 500), as_array=True), k)
        assert dst.dimensions == want.shape[1::-1] and dst.mpp == src.mpp
        np.testing.assert_array_equal(dst.read_region((0, 0), 0, dst.dimensions, as_array=True), want)
        assert dst.provenance.extra["region_level0"] == [100, 200, 300, 500]
    assert main(["slide", "convert", str(cmu), str(tmp_path / "bad.tiff"), "--region", "2000,0,300,10"]) == 2


def test_convert_pads_a_turned_region_with_glass(tmp_path, cmu) -> None:
    from tests.slide_io.test_slide_cli import main

    out = tmp_path / "pad.tiff"
    args = ["slide", "convert", str(cmu), str(out), "--compression", "deflate", "--no-progress", "--region",
            "100,200,300,500", "--dihedral", "1", "--pad", "10,20,30,40", "--pad-rgb", "240,241,242"]
    assert main(args) == 0
    with slide_io.open_slide(cmu) as src, slide_io.open_slide(out) as dst:
        inner = dihedral(src.read_region((100, 200), 0, (300, 500), as_array=True), 1)  # (300, 500, 3)
        got = dst.read_region((0, 0), 0, dst.dimensions, as_array=True)
        assert dst.dimensions == (500 + 20 + 40, 300 + 10 + 30)
        np.testing.assert_array_equal(got[10:310, 20:520], inner)
        assert (got[:10] == (240, 241, 242)).all() and (got[:, 520:] == (240, 241, 242)).all()
    assert main(["slide", "convert", str(cmu), str(tmp_path / "b.tiff"), "--pad", "1,2,3"]) == 2
