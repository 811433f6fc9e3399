"""Classifier two-sample test (C2ST; Lopez-Paz & Oquab, ICLR 2017): can a simple classifier tell synthetic tiles
from real ones by their features?

A logistic regression (standardised features, L2) is cross-validated on real (label 0) vs synthetic (label 1)
feature rows; the area under the ROC curve of its out-of-fold scores is the statistic. AUC 0.5: the classifier does
no better than chance (indistinguishable at this sample size); 1.0: it separates them every time. The interval is a
percentile bootstrap over tiles of the out-of-fold scores. Unlike the Fréchet distance it has a fixed, readable
scale, and it needs no real-vs-real reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def classifier_two_sample_test(real: NDArray[np.float64], synthetic: NDArray[np.float64], *, folds: int = 5,
                               seed: int = 0, n_resamples: int = 1000, level: float = 0.95) -> dict[str, Any]:
    """Cross-validated logistic-regression AUC of real vs synthetic feature rows, with a bootstrap interval.

    Args:
        real: ``(n, d)`` features of real tiles.
        synthetic: ``(m, d)`` features of synthetic tiles.
        folds: stratified cross-validation folds (fewer when a side has fewer rows).
        seed: fold assignment and bootstrap seed.
        n_resamples: bootstrap resamples of the out-of-fold scores.
        level: interval coverage.

    Returns:
        ``{"auc", "low", "high", "level", "folds", "n_real", "n_synthetic"}``.

    Raises:
        ValueError: fewer than 2 rows on a side, or rows of different widths.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    real, synthetic = np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    if real.ndim != 2 or synthetic.ndim != 2 or real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"features must be (n, d) and (m, d) with the same d, got {real.shape} and {synthetic.shape}")
    if min(len(real), len(synthetic)) < 2:
        raise ValueError(f"the classifier test needs >= 2 rows per side, got {len(real)} real and {len(synthetic)} "
                         f"synthetic")
    x = np.concatenate([real, synthetic])
    y = np.concatenate([np.zeros(len(real), int), np.ones(len(synthetic), int)])
    k = int(min(folds, len(real), len(synthetic)))
    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, scores))
    rng = np.random.default_rng(seed + 1)
    r_idx, s_idx = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    boot = []
    for _ in range(n_resamples):  # resample each side, so both classes are always present
        idx = np.concatenate([rng.choice(r_idx, len(r_idx)), rng.choice(s_idx, len(s_idx))])
        boot.append(roc_auc_score(y[idx], scores[idx]))
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return {"auc": auc, "low": float(low), "high": float(high), "level": level, "folds": k,
            "n_real": int(len(real)), "n_synthetic": int(len(synthetic))}
