"""Tissue masks on H&E and IHC, empty on glass; tiling grids at a target mpp with overlap and tissue filtering."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import color, data

import slide_io
from slide_io import detect_tissue, tile_grid, tissue_mask_rgb


def _on_glass(tile, seed=0):
    rng = np.random.default_rng(seed)
    canvas = np.clip(238 + rng.normal(0, 3, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    canvas[256:768, 256:768] = tile
    return canvas


def test_ihc_tissue_is_found_and_glass_is_not():
    mask = tissue_mask_rgb(_on_glass(data.immunohistochemistry()), 2.0)
    inside, outside = mask[256:768, 256:768], np.ones_like(mask)
    outside[256:768, 256:768] = False
    assert inside.mean() > 0.55 and mask[outside].mean() < 0.005


def test_he_tissue_fraction_follows_saturation(cmu):
    with slide_io.open_slide(cmu) as slide:
        tile = slide.read_region((1000, 1500), 0, (512, 512), as_array=True)
        tm = detect_tissue(slide, 8.0)
        full = slide.read_region((0, 0), 0, slide.dimensions, as_array=True)
    naive = (color.rgb2hsv(tile)[..., 1] > 0.1).mean()
    mask = tissue_mask_rgb(_on_glass(tile), 2.0)
    assert abs(mask[256:768, 256:768].mean() - naive) < 0.2
    assert mask[:200].mean() == 0
    assert tm.mask.shape == (185, 138) and tm.mpp == (8.0, 8.0)
    whole_naive = (color.rgb2hsv(full[::4, ::4])[..., 1] > 0.1).mean()
    assert abs(tm.fraction - whole_naive) < 0.15


def test_glass_only_gives_an_empty_mask():
    rng = np.random.default_rng(3)
    glass = np.clip(np.array([242, 240, 245]) + rng.normal(0, 3, (400, 400, 3)), 0, 255).astype(np.uint8)
    assert tissue_mask_rgb(glass, 4.0).sum() == 0
    assert tissue_mask_rgb(np.full((64, 64, 3), 255, np.uint8), 8.0).sum() == 0


def test_fraction_of_boxes_from_the_integral_image():
    mask = np.zeros((100, 100), bool)
    mask[:50, :] = True
    tm = slide_io.TissueMask(mask, slide_io.Mpp(8.0, 8.0), slide_io.Mpp(0.5, 0.5))  # 16 level-0 px per mask px
    assert tm.fraction == 0.5
    assert tm.fraction_at(0, 0, 1600, 1600) == 0.5
    assert tm.fraction_at(0, 0, 1600, 800) == 1.0
    assert tm.fraction_at(0, 800, 1600, 800) == 0.0
    assert tm.fraction_at(-3200, -3200, 1600, 1600) == 0.0


def test_grid_geometry_at_target_mpp():
    g = tile_grid((1000, 800), 0.25, mpp=0.5, size=(100, 100), overlap=20)
    assert g.stride == (80, 80) and g.shape == (5, 6)  # 500x400 px at 0.5 µm/px, covered
    last = g.windows[-1]
    assert (last.row, last.col, last.x, last.y, last.width, last.height) == (4, 5, 800, 640, 200, 200)
    inside = tile_grid((1000, 800), 0.25, mpp=0.5, size=(100, 100), overlap=20, edge="inside")
    assert inside.shape == (4, 6) and all(w.x + w.width <= 1000 and w.y + w.height <= 800 for w in inside.windows)


def test_grid_filtered_by_tissue_reads_tissue(cmu):
    with slide_io.open_slide(cmu) as slide:
        tm = detect_tissue(slide)
        g = tile_grid(slide.dimensions, slide.mpp, mpp=1.0, size=(128, 128), tissue=tm, min_tissue=0.6)
        assert 0 < len(g) < g.shape[0] * g.shape[1]
        for w in g.windows[:5]:
            rgb = slide.read_region_mpp((w.x, w.y), g.mpp, g.size)
            assert rgb.shape == (128, 128, 3)
            assert (color.rgb2hsv(rgb)[..., 1] > 0.1).mean() > 0.25


def test_grid_errors():
    with pytest.raises(ValueError, match=r"overlap=100 must satisfy 0 <= overlap < size=\(100, 100\)"):
        tile_grid((1000, 1000), 0.5, mpp=1.0, size=(100, 100), overlap=100)
    with pytest.raises(ValueError, match=r"size=\(0, 100\) must be positive"):
        tile_grid((1000, 1000), 0.5, mpp=1.0, size=(0, 100))
    with pytest.raises(ValueError, match=r"mpp must be > 0 µm/px, got 0"):
        tile_grid((1000, 1000), 0.5, mpp=0, size=(10, 10))
    with pytest.raises(ValueError, match=r"min_tissue=1.5 must be in \[0, 1\]"):
        tile_grid((1000, 1000), 0.5, mpp=1.0, size=(10, 10), min_tissue=1.5)
