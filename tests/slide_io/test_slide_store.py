"""WindowStore: sharded zarr v3 latents/pixels, exact read-back, done mask and resume, attrs, pyramid from a store."""

from __future__ import annotations

import numpy as np
import pytest

import slide_io
from slide_io import StoreError, WindowStore


def test_latent_windows_read_back_and_mark_done(tmp_path):
    store = WindowStore.create(tmp_path / "s.zarr", "latent", channels=16, dtype=np.float32,
                               attrs={"latent_scaling": {"scaling_factor": 0.3611, "shift_factor": 0.1159}})
    info = store.create_level(0, (300, 200), mpp=4.0, grid=(64, 64), origin=(128, 256))
    assert info.grid_shape == (5, 4)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 16, 64, 64)).astype(np.float32)
    store.write_window(0, 0, 0, a)
    store.write_window(0, 64, 136, b)  # reaches the right edge (cols 136:200): covers cell (1, 3) only
    np.testing.assert_array_equal(store.read(0, (0, 64), (0, 64)), a)
    np.testing.assert_array_equal(store.read(0, slice(64, 128), slice(136, 200)), b)
    assert store.read(0, (0, 64), (64, 128)).max() == 0  # unwritten
    expected = np.zeros((5, 4), bool)
    expected[0, 0] = expected[1, 3] = True
    np.testing.assert_array_equal(store.done(0), expected)
    assert len(store.pending(0)) == 18 and store.pending(0)[0] == (0, 64)
    # neighbour strip across two windows
    strip = store.read(0, (60, 68), (136, 200))
    np.testing.assert_array_equal(strip[:, 4:], b[:, :4])


def test_store_reopens_and_resumes(tmp_path):
    path = tmp_path / "p.zarr"
    store = WindowStore.create(path, "pixel", attrs={"slide_id": "s1"})
    store.create_level(0, (512, 512), mpp=0.5, grid=(256, 256))
    img = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    store.write_window(0, 0, 0, img[:256, :256])
    del store
    again = WindowStore.open(path)
    assert again.kind == "pixel" and again.attrs["slide_id"] == "s1" and again.levels == [0]
    assert again.create_level(0, (512, 512), mpp=0.5, grid=(256, 256)).shape == (512, 512)  # idempotent
    for row0, col0 in again.pending(0):
        again.write_window(0, row0, col0, img[row0 : row0 + 256, col0 : col0 + 256])
    assert again.done(0).all()
    np.testing.assert_array_equal(again.read(0, (0, 512), (0, 512)), img)
    again.update_attrs(status="complete")
    assert WindowStore.open(path, "r").attrs["status"] == "complete"


def test_pyramid_written_from_a_pixel_store_is_exact(tmp_path):
    store = WindowStore.create(tmp_path / "p.zarr", "pixel")
    store.create_level(0, (700, 900), mpp=0.5, grid=(256, 256), chunks=(128, 128), shards=(512, 512))
    img = np.random.default_rng(2).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    store.write_window(0, 0, 0, img)
    out = slide_io.write_pyramid(tmp_path / "o.tif", store.pixel_source(0), compression="deflate")
    with slide_io.open_slide(out) as slide:
        assert slide.dimensions == (900, 700) and slide.mpp == (0.5, 0.5)
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (900, 700), as_array=True), img)


def test_store_errors_name_the_value(tmp_path):
    path = tmp_path / "s.zarr"
    store = WindowStore.create(path, "latent", channels=4)
    store.create_level(0, (128, 128), mpp=8.0, grid=(64, 64))
    with pytest.raises(StoreError, match=r"already exists.*s.zarr"):
        WindowStore.create(path, "latent", channels=4)
    with pytest.raises(StoreError, match=r"latent window must be \(4, h, w\), got shape \(3, 64, 64\)"):
        store.write_window(0, 0, 0, np.zeros((3, 64, 64)))
    with pytest.raises(StoreError, match=r"window rows 100:164, cols 0:64 leaves level 0 of shape \(128, 128\)"):
        store.write_window(0, 100, 0, np.zeros((4, 64, 64)))
    with pytest.raises(StoreError, match=r"level 2 not in store \(levels: \[0\]\)"):
        store.read(2, (0, 1), (0, 1))
    with pytest.raises(StoreError, match=r"read rows 0:0, cols 0:10 is empty"):
        store.read(0, (0, 0), (0, 10))
    with pytest.raises(StoreError, match="exists with shape"):
        store.create_level(0, (64, 64), mpp=8.0, grid=(64, 64))
    with pytest.raises(StoreError, match="only pixel stores"):
        store.pixel_source(0)
    with pytest.raises(ValueError, match=r"kind='rgb' is not one of"):
        WindowStore.create(tmp_path / "x.zarr", "rgb")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="latent stores need channels > 0"):
        WindowStore.create(tmp_path / "x.zarr", "latent")
    with pytest.raises(StoreError, match="no zarr store here"):
        WindowStore.open(tmp_path / "nothing.zarr")
    with pytest.raises(ValueError, match="fixed at creation"):
        store.update_attrs(kind="pixel")
