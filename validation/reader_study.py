"""Blinded reader study: shuffled real and synthetic tiles, a key kept in another folder, the reader's own ratings,
an exact binomial test.

Two steps that never meet: `save_study` writes what the reader gets (tile PNGs with neutral ids, the blinded grid and
an empty ``ratings.csv``) and, in a separate folder, the key. The reader fills ``ratings.csv`` by hand — no code here
fills it. `unblind` refuses to open the key until every tile is rated (`require_complete`), then tests the reader's
accuracy against chance (0.5) with an exact one-sided binomial test (`scipy.stats.binomtest`, H1: accuracy > 0.5)
and gives a Clopper-Pearson interval.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

LABELS = ("real", "synthetic")


@dataclass(frozen=True)
class ReaderStudy:
    """Tiles in presentation order with ids; `key[i]` is 'real' or 'synthetic' and is kept away from the reader."""

    ids: tuple[str, ...]
    tiles: NDArray[np.uint8]
    key: tuple[str, ...]


@dataclass(frozen=True)
class ReaderResult:
    """Reader accuracy against chance."""

    n: int
    correct: int
    accuracy: float
    p_value: float
    ci_low: float
    ci_high: float
    chance: float = 0.5

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def summary(self) -> str:
        verdict = ("the reader tells synthetic from real better than chance" if self.p_value < 0.05 else
                   "the reader does not tell synthetic from real better than chance")
        return (f"{self.correct}/{self.n} correct, accuracy {self.accuracy:.2f} (95% Clopper-Pearson CI "
                f"{self.ci_low:.2f}–{self.ci_high:.2f}); exact one-sided binomial test of accuracy > {self.chance}: "
                f"p = {self.p_value:.3g} ({verdict}, at the 5% level)")


def make_study(real: NDArray[np.uint8], synthetic: NDArray[np.uint8], *, seed: int = 0) -> ReaderStudy:
    """Shuffle real and synthetic tiles into one blinded sequence.

    Raises:
        ValueError: either set empty, or tiles of different shapes.
    """
    if len(real) == 0 or len(synthetic) == 0:
        msg = f"a reader study needs real and synthetic tiles; got {len(real)} real and {len(synthetic)} synthetic"
        raise ValueError(msg)
    if real.shape[1:] != synthetic.shape[1:]:
        msg = f"real tiles {real.shape[1:]} and synthetic tiles {synthetic.shape[1:]} must have the same shape"
        raise ValueError(msg)
    tiles = np.concatenate([real, synthetic])
    key = np.array(["real"] * len(real) + ["synthetic"] * len(synthetic))
    order = np.random.default_rng(seed).permutation(len(tiles))
    return ReaderStudy(tuple(f"tile_{i + 1:03d}" for i in range(len(tiles))), tiles[order], tuple(key[order]))


def default_key_dir(folder: str | Path) -> Path:
    """Where `save_study` puts the key by default: a sibling folder ``<folder>-key``."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}-key"


def save_study(study: ReaderStudy, folder: str | Path, key_dir: str | Path | None = None) -> dict[str, Path]:
    """Write what the reader gets into ``folder`` — blinded tiles (PNG, by id), the blinded grid (``grid.png``) and
    an empty ratings sheet — and the key into ``key_dir`` (default `default_key_dir`), never into ``folder``.

    Returns:
        {'tiles': folder of PNGs, 'grid': the grid PNG, 'ratings': ratings CSV (id, rating), 'key': key JSON}.

    Raises:
        ValueError: ``key_dir`` inside ``folder`` (the reader would receive the key).
    """
    folder = Path(folder)
    key_dir = Path(key_dir) if key_dir is not None else default_key_dir(folder)
    if key_dir.resolve().is_relative_to(folder.resolve()):
        msg = f"the key folder {key_dir} is inside the reader's folder {folder}; keep the key apart"
        raise ValueError(msg)
    tiles_dir = folder / "tiles"
    tiles_dir.mkdir(parents=True, exist_ok=True)
    for tid, tile in zip(study.ids, study.tiles):
        Image.fromarray(tile).save(tiles_dir / f"{tid}.png")
    grid = folder / "grid.png"
    blinded_grid_figure(study).savefig(grid, dpi=80)
    ratings = folder / "ratings.csv"
    if not ratings.exists():  # never overwrite ratings already recorded
        with ratings.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "rating"])
            writer.writerows([tid, ""] for tid in study.ids)
    key_dir.mkdir(parents=True, exist_ok=True)
    key = key_dir / "key.json"
    tmp = key.with_name(f".key.json.{os.getpid()}.partial")
    tmp.write_text(json.dumps(dict(zip(study.ids, study.key)), indent=1))
    os.replace(tmp, key)
    return {"tiles": tiles_dir, "grid": grid, "ratings": ratings, "key": key}


def record_ratings(path: str | Path, ratings: Mapping[str, str]) -> None:
    """Write ratings {id: 'real' | 'synthetic'} into the ratings CSV (atomically).

    Raises:
        ValueError: a rating that is not 'real' or 'synthetic'.
    """
    bad = {k: v for k, v in ratings.items() if v not in LABELS}
    if bad:
        msg = f"ratings must be one of {LABELS}; got {bad}"
        raise ValueError(msg)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "rating"])
        writer.writerows(sorted(ratings.items()))
    os.replace(tmp, path)


def read_ratings(path: str | Path) -> dict[str, str]:
    """Ratings CSV → {id: rating}, skipping tiles not rated yet."""
    with Path(path).open(newline="") as fh:
        return {row["id"]: row["rating"].strip().lower() for row in csv.DictReader(fh) if row["rating"].strip()}


def score_ratings(ratings: Mapping[str, str], key: Mapping[str, str] | Sequence[str], ids: Sequence[str] | None = None
                  ) -> ReaderResult:
    """Reader accuracy with an exact one-sided binomial test against chance (0.5).

    Args:
        ratings: {id: 'real' | 'synthetic'} from the reader.
        key: {id: truth}, or the truths in the order of `ids`.
        ids: tile ids when `key` is a sequence.

    Raises:
        ValueError: no rated tile, unknown ids or labels.
    """
    from scipy.stats import binomtest

    truth = dict(key) if isinstance(key, Mapping) else dict(zip(ids or (), key))
    unknown = sorted(set(ratings) - set(truth))
    if unknown:
        msg = f"ratings for tiles not in the key: {unknown[:5]}"
        raise ValueError(msg)
    bad = {k: v for k, v in ratings.items() if v not in LABELS}
    if bad:
        msg = f"ratings must be one of {LABELS}; got {dict(list(bad.items())[:5])}"
        raise ValueError(msg)
    n = len(ratings)
    if n == 0:
        msg = "no tile has been rated yet"
        raise ValueError(msg)
    correct = sum(ratings[t] == truth[t] for t in ratings)
    test = binomtest(correct, n, 0.5, alternative="greater")
    ci = binomtest(correct, n, 0.5).proportion_ci(confidence_level=0.95, method="exact")
    return ReaderResult(n, correct, correct / n, float(test.pvalue), float(ci.low), float(ci.high))


def blinded_grid_figure(study: ReaderStudy, columns: int = 6) -> Any:
    """The tiles as a reader sees them: ids only, no hint of the truth."""
    from matplotlib.figure import Figure

    rows = -(-len(study.ids) // columns)
    fig = Figure(figsize=(2.2 * columns, 2.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, tid, tile in zip(axes.ravel(), study.ids, study.tiles):
        ax.imshow(tile)
        ax.set_title(tid, fontsize=9)
    fig.tight_layout()
    return fig


def require_complete(path: str | Path, ids: Sequence[str]) -> dict[str, str]:
    """The ratings in ``path`` when every tile in ``ids`` is rated 'real' or 'synthetic'.

    Raises:
        ValueError: tiles without a rating, with another word, or rows for unknown tiles — naming them, so the key
            stays closed until the reader has finished.
    """
    with Path(path).open(newline="") as fh:
        rows = {row["id"]: (row.get("rating") or "").strip().lower() for row in csv.DictReader(fh)}
    missing = [t for t in ids if not rows.get(t)]
    bad = {t: v for t, v in rows.items() if v and v not in LABELS}
    unknown = sorted(set(rows) - set(ids))
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(ids)} tiles have no rating ({', '.join(missing[:5])}"
                        f"{', …' if len(missing) > 5 else ''})")
    if bad:
        problems.append(f"ratings other than 'real' or 'synthetic': {dict(list(bad.items())[:5])}")
    if unknown:
        problems.append(f"rows for tiles not in the study: {unknown[:5]}")
    if problems:
        msg = (f"{path} is not complete: " + "; ".join(problems) + ". The key stays closed: rate every tile 'real' or "
               "'synthetic' in the rating column, save, and run the unblinding again.")
        raise ValueError(msg)
    return {t: rows[t] for t in ids}


def unblind(study_dir: str | Path, key_path: str | Path) -> tuple[ReaderResult, str]:
    """Check the reader's ``ratings.csv`` in ``study_dir`` against the tiles there (`require_complete`) before the
    key is read at all; then score the reader (`score_ratings`) and tabulate every tile (`unblinded_table`).

    Raises:
        ValueError: ratings incomplete (see `require_complete`); FileNotFoundError: no tiles or no key.
    """
    study_dir, key_path = Path(study_dir), Path(key_path)
    ids = sorted(p.stem for p in (study_dir / "tiles").glob("*.png"))
    if not ids:
        msg = f"no tiles in {study_dir / 'tiles'}; run the preparation step first"
        raise FileNotFoundError(msg)
    ratings = require_complete(study_dir / "ratings.csv", ids)
    if not key_path.is_file():
        msg = f"no key at {key_path}; unblinding needs the key.json that the preparation step wrote"
        raise FileNotFoundError(msg)
    key = json.loads(key_path.read_text())
    return score_ratings(ratings, key), unblinded_table(ratings, key)


def unblinded_table(ratings: Mapping[str, str], key: Mapping[str, str]) -> str:
    """A Markdown table of every rated tile with its rating and the truth, then the 2×2 counts."""
    lines = ["| tile | rating | truth | correct |", "|---|---|---|---|"]
    counts = {(t, r): 0 for t in LABELS for r in LABELS}
    for tid in sorted(ratings):
        ok = ratings[tid] == key[tid]
        counts[(key[tid], ratings[tid])] += 1
        lines.append(f"| {tid} | {ratings[tid]} | {key[tid]} | {'✓' if ok else '✗'} |")
    lines += ["", "| truth \\ rating | real | synthetic |", "|---|---|---|"]
    lines += [f"| {t} | {counts[(t, 'real')]} | {counts[(t, 'synthetic')]} |" for t in LABELS]
    return "\n".join(lines)
