"""Memorisation check: are generated tiles closer to training tiles than unseen real tiles are?

Distances are Euclidean between L2-normalised features. For each generated tile its nearest training tile is
found; the same is done for held-out real tiles (never trained on). A generated tile is flagged as a near-copy
when its distance falls below `ratio` × the `quantile` of the held-out distances: closer to a training tile than
almost any unseen real tile is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def _normalise(x: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1:
        msg = f"{name} must be (n >= 1, d) features; got shape {arr.shape}"
        raise ValueError(msg)
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


def nearest_neighbours(query: ArrayLike, reference: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Distance to and index of each query row's nearest reference row (L2-normalised features)."""
    q, r = _normalise(query, "query"), _normalise(reference, "reference")
    if q.shape[1] != r.shape[1]:
        msg = f"query and reference must have the same number of features; got {q.shape[1]} and {r.shape[1]}"
        raise ValueError(msg)
    d2 = np.maximum((q * q).sum(1)[:, None] + (r * r).sum(1)[None, :] - 2.0 * q @ r.T, 0.0)  # (n_q, n_r)
    idx = d2.argmin(axis=1)
    return np.sqrt(d2[np.arange(len(q)), idx]), idx


@dataclass(frozen=True)
class MemorisationReport:
    """Nearest-training-tile distances of generated and held-out tiles, the threshold, and the flagged pairs."""

    generated_distance: NDArray[np.float64]
    generated_neighbour: NDArray[np.int64]
    heldout_distance: NDArray[np.float64]
    threshold: float
    flagged: tuple[int, ...]  # generated tile indices, closest first

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": self.threshold,
            "generated_nn_median": float(np.median(self.generated_distance)),
            "heldout_nn_median": float(np.median(self.heldout_distance)),
            "n_generated": len(self.generated_distance),
            "n_heldout": len(self.heldout_distance),
            "flagged": [{"generated": int(i), "training": int(self.generated_neighbour[i]),
                         "distance": float(self.generated_distance[i])} for i in self.flagged],
        }


def memorisation_check(generated: ArrayLike, heldout: ArrayLike, training: ArrayLike, *, ratio: float = 0.5,
                       quantile: float = 0.05) -> MemorisationReport:
    """Flag generated tiles that are near-copies of training tiles.

    Args:
        generated: (n_g, d) features of generated tiles.
        heldout: (n_h, d) features of real tiles not used in training.
        training: (n_t, d) features of training tiles.
        ratio: flag below this fraction of the held-out reference distance.
        quantile: which quantile of the held-out nearest-neighbour distances is the reference.

    Raises:
        ValueError: bad shapes, ratio not in (0, 1] or quantile not in [0, 1].
    """
    if not 0.0 < ratio <= 1.0 or not 0.0 <= quantile <= 1.0:
        msg = f"ratio={ratio} must be in (0, 1] and quantile={quantile} in [0, 1]"
        raise ValueError(msg)
    g_dist, g_idx = nearest_neighbours(generated, training)
    h_dist, _ = nearest_neighbours(heldout, training)
    threshold = ratio * float(np.quantile(h_dist, quantile))
    flagged = tuple(int(i) for i in np.argsort(g_dist) if g_dist[i] < threshold)
    return MemorisationReport(g_dist, g_idx, h_dist, threshold, flagged)
