"""Fréchet distance: hand-computed values and equality with MONAI's FIDMetric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric

from validation.fid import compute_frechet_distance, frechet_distance


def test_moment_form_of_two_2d_gaussians_matches_hand_computation():
    # |μx−μy|² = 1 + 4 = 5; tr Σx = tr Σy = 5; Σx Σy = diag(4, 4) so tr (Σx Σy)^½ = 4  →  5 + 10 − 8 = 7
    d = compute_frechet_distance([0.0, 0.0], np.diag([1.0, 4.0]), [1.0, 2.0], np.diag([4.0, 1.0]))
    assert d == pytest.approx(7.0, abs=1e-9)


def test_sample_form_of_a_toy_feature_matrix_matches_hand_computation():
    # x: μ = 0, Σ = diag(2, 0); y: μ = (3, 0), Σ = diag(0, 2); Σx Σy = 0  →  9 + 2 + 2 − 0 = 13
    x = [[1.0, 0.0], [-1.0, 0.0]]
    y = [[3.0, 1.0], [3.0, -1.0]]
    assert frechet_distance(x, y) == pytest.approx(13.0, abs=1e-9)
    assert float(FIDMetric()(torch.tensor(y, dtype=torch.float64), torch.tensor(x, dtype=torch.float64))) == \
        pytest.approx(13.0, abs=1e-6)


@pytest.mark.parametrize(("n", "m", "d"), [(30, 40, 8), (12, 9, 64)])
def test_sample_form_equals_monai_fidmetric(n, m, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) * 1.3 + 0.2
    ours = frechet_distance(x, y)
    monai = float(FIDMetric()(torch.from_numpy(y), torch.from_numpy(x)))
    assert ours == pytest.approx(monai, rel=1e-6)


def test_identical_samples_have_zero_distance():
    x = np.random.default_rng(0).normal(size=(20, 16))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_bad_shapes_are_refused_with_the_shapes_named():
    with pytest.raises(ValueError, match=r"same number of features; got 3 and 4"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"number of samples >= 2.*\(1, 3\)"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"expected means \(d,\) and covariances"):
        compute_frechet_distance([0.0, 0.0], np.eye(3), [0.0, 0.0], np.eye(2))
