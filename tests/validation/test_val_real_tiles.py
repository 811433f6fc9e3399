"""On real H&E tiles (../shared/data/tiles): real vs real (disjoint crops) is closer than real vs the same crops with
a planted stain shift, blur or noise, the findings name the damage, and a planted training copy is flagged."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_file
from validation import perturb
from validation.features import load_extractor
from validation.fid import frechet_distance
from validation.image_metrics import mmd
from validation.inputs import crop_grid, read_rgb
from validation.pipeline import ValidationConfig, run_validation

SOURCES = ("tiles/tiatoolbox_target_image.png", "tiles/torchstain/source.png", "tiles/torchstain/target.png",
           *(f"tiles/mopadi/TCGA-3X-AAVA-01Z-00-DX1__0_0_{i}_506.jpg" for i in range(6)),
           "tiles/mopadi/CRC-VAL-HE-7K-NORM-TCGA-YLVCMEHK.tif")
PERTURBATIONS = {"stain": perturb.stain_shift, "blur": perturb.blur, "noise": perturb.noise}
EXPECTED = {"stain": "] stain shift:", "blur": "] blur:", "noise": "] noise:"}


@pytest.fixture(scope="module")
def crops() -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of 224-px crops of the shared real tiles, interleaved so each source is in both."""
    tiles = [crop for rel in SOURCES for _, _, crop in crop_grid(read_rgb(shared_file(rel)), 224)]
    stack = np.stack(tiles)
    return stack[0::2], stack[1::2]


@pytest.fixture(scope="module")
def features(crops):
    a, b = crops
    extractor = load_extractor()
    return extractor, extractor(a), extractor(b), {n: extractor(fn(b)) for n, fn in PERTURBATIONS.items()}


def test_real_to_real_is_closer_than_real_to_perturbed(features):
    _, fa, fb, perturbed = features
    base_fd, base_mmd = frechet_distance(fa, fb), mmd(fa, fb)
    for name, fp in perturbed.items():
        assert frechet_distance(fa, fp) > base_fd, name  # ImageNet features see stain least: 164 vs 151
        assert mmd(fa, fp) > base_mmd + 5.0, name


def _write(folder: Path, tiles: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, tile in enumerate(tiles):
        Image.fromarray(tile).save(folder / f"{i:03d}.png")
    return folder


@pytest.mark.parametrize("name", ["none", *PERTURBATIONS])
def test_findings_name_the_planted_damage(tmp_path, crops, name):
    a, b = crops
    synthetic = b if name == "none" else PERTURBATIONS[name](b)
    config = ValidationConfig(n_resamples=50, ms_ssim_pairs=6, max_tiles=32)
    result = run_validation([_write(tmp_path / "real", a)], [_write(tmp_path / "synthetic", synthetic)],
                            tmp_path / "out", config=config, progress=False, write_html=False)
    text = " | ".join(result.metrics["findings"])
    kinds = {k: v in text for k, v in EXPECTED.items()}
    if name == "none":
        assert not any(kinds.values()), text
    else:
        assert kinds[name], text
    assert (tmp_path / "out" / "metrics.json").is_file()


def test_a_planted_copy_of_a_training_tile_is_flagged_with_its_pair(tmp_path, crops):
    a, b = crops
    training, heldout = a[:8], b
    copy = training[5]
    buf = io.BytesIO()
    Image.fromarray(training[2]).save(buf, format="JPEG", quality=80)  # a re-encoded copy, not bit-identical
    recoded = np.asarray(Image.open(buf).convert("RGB"))
    generated = np.concatenate([perturb.noise(a[8:12], 4.0), copy[None], recoded[None]])
    config = ValidationConfig(n_resamples=50, ms_ssim_pairs=4, max_tiles=32)
    result = run_validation([_write(tmp_path / "heldout", heldout)], [_write(tmp_path / "generated", generated)],
                            tmp_path / "out", training=[_write(tmp_path / "training", training)], config=config,
                            progress=False, write_html=False)
    mem = result.metrics["levels"]["tiles"]["memorisation"]
    pairs = {(f["generated"], f["training"]) for f in mem["flagged"]}
    assert pairs == {(4, 5), (5, 2)}
    assert any("near-copies of training tiles" in f for f in result.metrics["findings"])
