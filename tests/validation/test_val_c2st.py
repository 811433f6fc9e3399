"""The classifier two-sample test (validation.c2st): chance on one distribution, certainty on two, named errors."""

from __future__ import annotations

import numpy as np
import pytest

from validation.c2st import classifier_two_sample_test


def test_same_distribution_gives_chance_and_an_interval_around_it() -> None:
    rng = np.random.default_rng(0)
    out = classifier_two_sample_test(rng.normal(size=(80, 16)), rng.normal(size=(80, 16)), seed=1, n_resamples=300)
    assert abs(out["auc"] - 0.5) < 0.12 and out["low"] < 0.5 < out["high"]
    assert (out["n_real"], out["n_synthetic"], out["folds"], out["level"]) == (80, 80, 5, 0.95)


def test_separated_distributions_are_told_apart_every_time() -> None:
    rng = np.random.default_rng(2)
    real = rng.normal(size=(40, 8))
    synthetic = rng.normal(size=(30, 8)) + np.r_[5.0, np.zeros(7)]  # one feature moved by 5 standard deviations
    out = classifier_two_sample_test(real, synthetic, n_resamples=200)
    assert out["auc"] > 0.97 and out["low"] > 0.9


def test_folds_shrink_to_the_smaller_side_and_bad_shapes_are_named() -> None:
    rng = np.random.default_rng(3)
    assert classifier_two_sample_test(rng.normal(size=(10, 4)), rng.normal(size=(3, 4)), n_resamples=50)["folds"] == 3
    with pytest.raises(ValueError, match=r"same d, got \(5, 4\) and \(5, 3\)"):
        classifier_two_sample_test(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="needs >= 2 rows per side, got 5 real and 1 synthetic"):
        classifier_two_sample_test(np.zeros((5, 4)), np.zeros((1, 4)))
