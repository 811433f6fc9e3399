"""Tile inputs (folders, lists, crops, errors) and the reader-study bookkeeping and binomial test."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from validation.inputs import crop_grid, expand_paths, load_tileset
from validation.reader_study import make_study, read_ratings, record_ratings, save_study, score_ratings, unblind


def _image(path, w, h, value=100):
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)
    return path


def test_crop_grid_is_centred_and_disjoint():
    image = np.arange(500 * 460 * 3, dtype=np.int64).reshape(500, 460, 3).astype(np.uint8)
    crops = crop_grid(image, 224)
    assert [(x, y) for x, y, _ in crops] == [(6, 26), (230, 26), (6, 250), (230, 250)]
    assert all(c.shape == (224, 224, 3) for _, _, c in crops)
    np.testing.assert_array_equal(crops[3][2], image[250:474, 230:454])


def test_folders_and_lists_become_one_tile_level(tmp_path):
    folder = tmp_path / "tiles"
    folder.mkdir()
    _image(folder / "a.png", 448, 224)
    _image(folder / "b.jpg", 230, 230)
    (folder / "notes.md").write_text("ignored")
    listing = tmp_path / "list.txt"
    listing.write_text("tiles/a.png\n")
    slides, images = expand_paths([folder, listing])
    assert slides == [] and [p.name for p in images] == ["a.png", "b.jpg", "a.png"]
    ts = load_tileset("real", [folder], mpps=None, max_tiles=10)
    assert list(ts.levels) == ["tiles"] and ts.levels["tiles"].tiles.shape == (3, 224, 224, 3)
    assert ts.levels["tiles"].origins == ["a.png (0, 0)", "a.png (224, 0)", "b.jpg (3, 3)"]
    assert list(load_tileset("real", [folder], mpps=None, tile_mpp=0.5).levels) == ["0.50 µm/px"]


def test_bad_inputs_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"input .*missing.png does not exist"):
        expand_paths([tmp_path / "missing.png"])
    small = _image(tmp_path / "small.png", 100, 120)
    with pytest.raises(ValueError, match=r"small.png is 100x120 px, smaller than tile_size=224"):
        load_tileset("real", [small], mpps=None)
    (tmp_path / "data.csv").write_text("x")
    with pytest.raises(ValueError, match="neither a slide nor an image"):
        expand_paths([tmp_path / "data.csv"])


def test_binomial_test_of_reader_accuracy_matches_hand_computation():
    key = {f"t{i}": ("real" if i % 2 else "synthetic") for i in range(12)}
    flip = {"t0", "t1"}  # 10 of 12 right
    ratings = {t: (v if t not in flip else ("real" if v == "synthetic" else "synthetic")) for t, v in key.items()}
    result = score_ratings(ratings, key)
    # P(X >= 10 | n = 12, p = 0.5) = (C(12,10) + C(12,11) + C(12,12)) / 2^12 = 79 / 4096
    assert (result.correct, result.n) == (10, 12)
    assert result.p_value == pytest.approx(79 / 4096, rel=1e-9)
    assert result.ci_low < 0.833 < result.ci_high and "better than chance" in result.summary()
    chance = score_ratings({t: "real" for t in key}, key)
    assert chance.accuracy == 0.5 and chance.p_value > 0.5 and "does not tell synthetic from real better than chance" in chance.summary()
    with pytest.raises(ValueError, match=r"ratings must be one of \('real', 'synthetic'\)"):
        score_ratings({"t0": "maybe"}, key)
    with pytest.raises(ValueError, match="not in the key"):
        score_ratings({"t99": "real"}, key)


def test_study_is_shuffled_blinded_and_ratings_survive_a_rerun(tmp_path):
    real = np.zeros((4, 8, 8, 3), np.uint8)
    synthetic = np.full((3, 8, 8, 3), 255, np.uint8)
    study = make_study(real, synthetic, seed=1)
    truth = ["real" if t.max() == 0 else "synthetic" for t in study.tiles]
    assert list(study.key) == truth and sorted(study.key).count("real") == 4
    assert list(study.key) != ["real"] * 4 + ["synthetic"] * 3  # shuffled
    files = save_study(study, tmp_path / "study")
    assert json.loads(files["key"].read_text()) == dict(zip(study.ids, study.key))
    assert files["key"].parent == tmp_path / "study-key" and files["grid"].is_file()  # the key is not in the reader's folder
    assert sorted(p.name for p in files["tiles"].iterdir()) == [f"tile_{i:03d}.png" for i in range(1, 8)]
    assert read_ratings(files["ratings"]) == {}
    record_ratings(files["ratings"], {"tile_001": "real"})
    save_study(study, tmp_path / "study")  # a rerun must not wipe recorded ratings
    assert read_ratings(files["ratings"]) == {"tile_001": "real"}
    with pytest.raises(ValueError, match="same shape"):
        make_study(real, np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="inside the reader's folder"):
        save_study(study, tmp_path / "study", tmp_path / "study" / "key")


def test_unblinding_refuses_until_every_tile_is_rated(tmp_path):
    study = make_study(np.zeros((3, 8, 8, 3), np.uint8), np.full((3, 8, 8, 3), 255, np.uint8), seed=2)
    files = save_study(study, tmp_path / "study")
    with pytest.raises(ValueError, match=r"6 of 6 tiles have no rating .* The key stays closed"):
        unblind(tmp_path / "study", files["key"])
    files["ratings"].write_text("id,rating\n" + "".join(f"{t},real\n" for t in study.ids[:5]) + f"{study.ids[5]},maybe\n")
    with pytest.raises(ValueError, match=r"other than 'real' or 'synthetic': \{'tile_006': 'maybe'\}"):
        unblind(tmp_path / "study", files["key"])
    truth = dict(zip(study.ids, study.key))
    record_ratings(files["ratings"], truth)  # the reader (here: the test) rates every tile, all correct
    result, table = unblind(tmp_path / "study", files["key"])
    assert (result.correct, result.n) == (6, 6) and result.p_value == pytest.approx(0.5 ** 6)
    assert "exact one-sided binomial test of accuracy > 0.5: p = 0.0156" in result.summary()
    assert table.count("✓") == 6
