"""MMD, MS-SSIM, SSIM/PSNR, bootstrap intervals, seams, level consistency and memorisation on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from validation.bootstrap import bootstrap_interval
from validation.image_metrics import mmd, ms_ssim_pairs, paired_ssim_psnr
from validation.magnification import consistency, downsample_area
from validation.memorisation import memorisation_check, nearest_neighbours
from validation.seams import seam_report


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB texture (blurred noise), like tissue at a glance."""
    rng = np.random.default_rng(seed)
    grey = ndimage.gaussian_filter(rng.normal(size=(h, w)), 2.0)
    grey = (grey - grey.min()) / (grey.max() - grey.min()) * 160 + 60
    return np.repeat(grey[..., None], 3, axis=2).round().astype(np.uint8)


def test_mmd_linear_unbiased_matches_hand_computation():
    # Σ_{i≠j} x_i·x_j/(2·1) = −1; y: 2·8/2 = 8; cross: 0  →  7
    assert mmd([[1.0, 0.0], [-1.0, 0.0]], [[3.0, 1.0], [3.0, -1.0]]) == pytest.approx(7.0)


def test_mmd_refuses_mismatched_features():
    with pytest.raises(ValueError, match=r"equal d; got \(4, 3\) and \(4, 2\)"):
        mmd(np.zeros((4, 3)), np.zeros((4, 2)))


def test_ms_ssim_is_one_for_identical_tiles_and_lower_for_different_ones():
    a = _texture(224, 224, 0)
    same = ms_ssim_pairs(np.stack([a, a]))
    different = ms_ssim_pairs(np.stack([a, _texture(224, 224, 1)]))
    assert same == pytest.approx([1.0], abs=1e-5)
    assert different[0] < 0.5


def test_ms_ssim_refuses_tiles_too_small_for_five_scales():
    with pytest.raises(ValueError, match=r"at least 161x161 px; got \(128, 128\)"):
        ms_ssim_pairs(np.zeros((2, 128, 128, 3), np.uint8))


def test_paired_psnr_of_a_constant_offset_is_exact():
    a = _texture(64, 64)
    b = (a.astype(int) + 10).astype(np.uint8)  # MSE = 100 on a 0..255 scale
    ssim, psnr = paired_ssim_psnr(a[None], b[None])
    assert psnr[0] == pytest.approx(10 * np.log10(255**2 / 100), abs=1e-3)
    assert 0.9 < ssim[0] < 1.0
    with pytest.raises(ValueError, match="same shape"):
        paired_ssim_psnr(a[None], b[None, :32])


def test_bootstrap_interval_covers_the_mean_of_a_known_normal():
    x = np.random.default_rng(0).normal(5.0, 1.0, size=400)
    iv = bootstrap_interval(np.mean, (x,), n_resamples=300, seed=1)
    assert iv.low < 5.0 < iv.high
    assert iv.high - iv.low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.25)
    assert bootstrap_interval(np.mean, (x,), n_resamples=300, seed=1) == iv  # seeded
    basic = bootstrap_interval(np.mean, (x,), n_resamples=300, seed=1, method="basic")
    assert basic.low == pytest.approx(2 * iv.value - iv.high) and basic.high == pytest.approx(2 * iv.value - iv.low)
    with pytest.raises(ValueError, match=r"confidence=1.5 must lie in \(0, 1\)"):
        bootstrap_interval(np.mean, (x,), confidence=1.5)
    with pytest.raises(ValueError, match="sample 0 needs at least 2 rows"):
        bootstrap_interval(np.mean, (x[:1],))


def test_a_planted_seam_is_detected_and_located():
    image = _texture(400, 400, 3)
    clean = seam_report(image, 100)
    assert clean.flagged == ()
    assert clean.score == pytest.approx(1.0, abs=0.1)
    seamed = image.copy()
    seamed[100:200, 300:] = _texture(100, 100, 9)  # window (row 1, col 3) replaced by other content
    rep = seam_report(seamed, 100)
    assert rep.score > clean.score + 0.05
    located = {(s.axis, s.position, s.start, s.end) for s in rep.flagged}
    # its left border (x = 300, rows 100-200) and its top and bottom borders (y = 100, 200; columns 300-400)
    assert ("x", 300, 100, 200) in located
    assert {("y", 100, 300, 400), ("y", 200, 300, 400)} <= located
    assert all(s.position in (100, 200, 300) for s in rep.flagged)
    assert all(s.start >= 100 and s.end <= 400 for s in rep.flagged if s.axis == "x")


def test_a_brightness_seam_on_real_tissue_is_located(shared_data):
    from validation.inputs import read_rgb

    image = read_rgb(shared_data / "tiles" / "tiatoolbox_target_image.png")[:768, :768]
    assert seam_report(image, 256).flagged == ()
    seamed = image.astype(int)
    seamed[:, 512:] += 30
    rep = seam_report(np.clip(seamed, 0, 255).astype(np.uint8), 256)
    assert {(s.axis, s.position) for s in rep.flagged} == {("x", 512)}
    assert len(rep.flagged) == 3  # all three window rows along that border


def test_seam_window_too_small_is_refused():
    with pytest.raises(ValueError, match=r"window=32 px is too small"):
        seam_report(np.zeros((100, 100)), 32)


def test_level_consistency_sees_a_coarse_level_that_disagrees():
    fine = _texture(256, 256, 4)
    coarse = downsample_area(fine, 2)
    assert downsample_area(np.arange(16, dtype=np.uint8).reshape(4, 4, 1).repeat(3, 2), 2)[..., 0].tolist() == \
        [[2, 4], [10, 12]]  # means of 2×2 blocks, rounded half to even: 2.5→2, 4.5→4, 10.5→10, 12.5→12
    good = consistency(fine, coarse, 2)
    assert good["psnr"] == np.inf and good["ssim"] == pytest.approx(1.0)
    bad = consistency(fine, _texture(128, 128, 5), 2)
    assert bad["psnr"] < 20 and bad["ssim"] < 0.5
    with pytest.raises(ValueError, match=r"downsampled by 2 gives \(128, 128, 3\), but coarse is \(100, 100, 3\)"):
        consistency(fine, coarse[:100, :100], 2)


def test_memorisation_flags_a_planted_copy_with_its_training_pair():
    rng = np.random.default_rng(0)
    training = rng.normal(size=(50, 32))
    heldout = rng.normal(size=(20, 32))
    generated = rng.normal(size=(10, 32))
    generated[4] = training[17] + rng.normal(scale=0.01, size=32)  # near-copy
    rep = memorisation_check(generated, heldout, training)
    assert rep.flagged == (4,)
    assert rep.generated_neighbour[4] == 17
    assert rep.to_dict()["flagged"][0]["training"] == 17
    dist, idx = nearest_neighbours(training[:3], training)
    assert idx.tolist() == [0, 1, 2] and dist == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"ratio=2 must be in \(0, 1\]"):
        memorisation_check(generated, heldout, training, ratio=2)


# ---- layout measures: outlines along the window grid, stripes ---------------------------------------------------------
def test_outline_grid_ratio_sees_window_shaped_tissue_and_not_round_tissue() -> None:
    from validation.seams import outline_grid_ratio

    image = np.full((512, 512, 3), 245, np.uint8)  # glass
    image[128:256, 256:384] = (150, 80, 160)  # one window-shaped block of tissue, windows of 128 px
    blocky = outline_grid_ratio(image, 128)
    yy, xx = np.mgrid[:512, :512]
    round_ = np.full((512, 512, 3), 245, np.uint8)
    round_[(yy - 250) ** 2 + (xx - 230) ** 2 < 150**2] = (150, 80, 160)
    # 8 x 8 blocks of 16 px per window, 4 of them (0, 7 on each axis) on the grid: chance share 1 - (6/8)^2 = 0.4375
    assert blocky == pytest.approx(1 / 0.4375)  # every outline block of a window-shaped tissue lies on the grid
    assert 0.5 < outline_grid_ratio(round_, 128) < 1.4
    with pytest.raises(ValueError, match="window=100 px must be a multiple of block=16 px"):
        outline_grid_ratio(image, 100)


def test_stripe_peak_ratio_finds_periodic_rows() -> None:
    from validation.seams import stripe_peak_ratio

    rng = np.random.default_rng(0)
    noise = rng.normal(128, 20, (1024, 256))
    striped = noise + 30 * (np.arange(1024) % 56 < 4)[:, None]  # a bright 4-row stripe every 56 px
    assert stripe_peak_ratio(striped) > 30
    assert stripe_peak_ratio(noise) < 8
