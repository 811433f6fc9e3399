"""A prepared training dataset: the manifest, patient-level splits, and read access to latents and report features.

Layout written by ``zwsi prepare`` (`zwsi.train.prepare`):

    DATASET/
      manifest.json            slides (slide, report, patient, fields, subtype, split, tissue windows per level),
                               the window geometry (PlanConfig), the ladder, the VAE and text encoder used
      latents/<slide>.zarr     slide_io.WindowStore of VAE latents, one store level per ladder rung
      features/<enc>/<sha>.safetensors   report features (zwsi.text.cache.EmbeddingCache)
      vae/                     only with --random-init: the tiny random VAE, so samples can be decoded

Every slide's windows sit on the planner's grid (`zwsi.planner.plan_slide` with the manifest's geometry), so a
training window and its contexts are exactly those generation would use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zwsi.planner import PlanConfig, SlidePlan, plan_slide

if TYPE_CHECKING:
    import torch

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass
class SlideEntry:
    """One slide of the dataset and its report.

    Attributes:
        slide_id: unique id (file stem up to the first dot).
        path: the slide file as given.
        report_id: id of the matched report.
        patient_id: the patient (splits never share one).
        subtype: histologic subtype label for balanced sampling.
        fields: fields from the source metadata and the ones the text states (canonical labels).
        text_sha256: hash of the verbatim report text.
        n_report_tokens: tokens the text encoder received; report_truncated: whether its limit cut the report.
        height_um, width_um: extent of the planned area (the slide less ``origin_um``).
        origin_um: (y, x) µm of the planned area's top-left corner in the slide; entries of one slide with other
            origins see it on a shifted window grid (``zwsi prepare --grid-offsets``), as generation may.
        store: latent store, relative to the dataset folder.
        features: report features file, relative to the dataset folder.
        tissue: per level (finest first) the (row, col) of windows holding tissue (none at rungs not encoded).
        train_levels: the levels the slide trains (`zwsi.train.prepare.trained_levels`); None (manifests before
            this field): every level.
        split: "train", "val" or "test".
        status: "pending", "done" or "skipped"; reason: why it was skipped.
    """

    slide_id: str
    path: str
    report_id: str
    patient_id: str
    subtype: str = "unknown"
    fields: dict[str, str] = field(default_factory=dict)
    text_sha256: str = ""
    n_report_tokens: int = 0
    report_truncated: bool = False
    height_um: float = 0.0
    width_um: float = 0.0
    origin_um: list[float] = field(default_factory=lambda: [0.0, 0.0])
    store: str = ""
    features: str = ""
    tissue: list[list[list[int]]] = field(default_factory=list)
    train_levels: list[int] | None = None
    split: str = ""
    status: str = "pending"
    reason: str = ""


@dataclass
class Manifest:
    """The dataset's manifest (``manifest.json``)."""

    plan: dict[str, Any]
    final_mpp: float
    coarsest_mpp: float
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    split_fractions: dict[str, float]
    split_seed: int
    slides: list[SlideEntry] = field(default_factory=list)
    version: int = MANIFEST_VERSION

    @property
    def plan_config(self) -> PlanConfig:
        return PlanConfig(**self.plan)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if d.get("version") != MANIFEST_VERSION:
            raise ValueError(f"manifest version {d.get('version')!r} is not {MANIFEST_VERSION}")
        d = dict(d)
        d["slides"] = [SlideEntry(**s) for s in d.get("slides", [])]
        return cls(**d)

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` atomically (temporary file, then rename)."""
        write_json_atomic(folder / MANIFEST_NAME, self.to_dict())

    @classmethod
    def read(cls, folder: str | Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST_NAME} in {folder}: prepare the dataset with `zwsi prepare` first")
        return cls.from_dict(json.loads(path.read_text()))

    def entry(self, slide_id: str) -> SlideEntry | None:
        return next((s for s in self.slides if s.slide_id == slide_id), None)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def assign_splits(patients: Sequence[str], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Patient -> split, deterministic: patients ordered by a seeded hash, cut by the fractions.

    Every split with a positive fraction gets at least one patient when there are enough patients (train is
    kept non-empty), so no patient is ever in two splits.

    Raises:
        ValueError: unknown split names or fractions that are negative or do not sum to 1.
    """
    unknown = sorted(set(fractions) - set(SPLITS))
    if unknown or any(v < 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} must name {list(SPLITS)} with non-negative values summing to 1")
    unique = sorted(set(patients), key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    n = len(unique)
    counts = {name: int(round(fractions.get(name, 0.0) * n)) for name in ("val", "test")}
    for name in ("val", "test"):
        if fractions.get(name, 0.0) > 0 and counts[name] == 0 and n - sum(counts.values()) > 1:
            counts[name] = 1
    while sum(counts.values()) >= n and n > 0 and any(counts.values()):  # keep at least one training patient
        biggest = max(counts, key=lambda k: counts[k])
        counts[biggest] -= 1
    out: dict[str, str] = {}
    i = 0
    for name in ("val", "test"):
        for p in unique[i : i + counts[name]]:
            out[p] = name
        i += counts[name]
    for p in unique[i:]:
        out[p] = "train"
    return out


class PreparedDataset:
    """Read access to a prepared dataset: slides of one split, their plans, latents and report features.

    Args:
        folder: the dataset folder written by ``zwsi prepare``.
    """

    def __init__(self, folder: str | Path, *, cache_bytes: int = 256 << 20) -> None:
        self.folder = Path(folder)
        self.manifest = Manifest.read(self.folder)
        self.cache_bytes = int(cache_bytes)
        self._levels: dict[tuple[str, int], np.ndarray] = {}
        self._cached = 0
        self._stores: dict[str, Any] = {}
        self._features: dict[str, torch.Tensor] = {}
        self._plans: dict[str, SlidePlan] = {}

    @property
    def plan_config(self) -> PlanConfig:
        return self.manifest.plan_config

    @property
    def feature_dim(self) -> int:
        return int(self.manifest.text_encoder["feature_dim"])

    def slides(self, split: str | None = None) -> list[SlideEntry]:
        """Prepared slides (status done), optionally of one split."""
        return [s for s in self.manifest.slides if s.status == "done" and (split is None or s.split == split)]

    def plan(self, entry: SlideEntry) -> SlidePlan:
        """The slide's plan: the same levels and window grid as generation would use."""
        if entry.slide_id not in self._plans:
            m = self.manifest
            self._plans[entry.slide_id] = plan_slide(
                entry.height_um, entry.width_um, m.final_mpp, seed=0, coarsest_mpp=m.coarsest_mpp, config=m.plan_config
            )
        return self._plans[entry.slide_id]

    def store(self, entry: SlideEntry) -> Any:
        """The slide's latent `slide_io.WindowStore`, opened read-only once."""
        from slide_io import WindowStore

        if entry.slide_id not in self._stores:
            self._stores[entry.slide_id] = WindowStore.open(self.folder / entry.store, mode="r")
        return self._stores[entry.slide_id]

    def read_latents(self, entry: SlideEntry, level: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        """Latents (C, h, w) float32 of a level's canvas (the planner's `ReadLatents`).

        Whole levels are kept in memory while they fit in `cache_bytes` (small slides and coarse levels); the rest
        is read from the zarr store window by window.
        """
        key = (entry.slide_id, level)
        if key not in self._levels:
            store = self.store(entry)
            info = store.level_info(level)
            size = store.channels * info.shape[0] * info.shape[1] * store.dtype.itemsize
            if self._cached + size > self.cache_bytes:
                return store.read(level, rows, cols).astype(np.float32)
            self._levels[key] = store.read(level, (0, info.shape[0]), (0, info.shape[1]))
            self._cached += size
        return self._levels[key][:, rows[0] : rows[1], cols[0] : cols[1]].astype(np.float32)

    def report_features(self, entry: SlideEntry) -> torch.Tensor:
        """(L, D) float32 report features of the slide (cached in memory)."""
        if entry.slide_id not in self._features:
            from safetensors.torch import load_file

            self._features[entry.slide_id] = load_file(self.folder / entry.features)["features"].float()
        return self._features[entry.slide_id]

    def vae_folder(self) -> Path | None:
        """Folder of the VAE the latents were made with (for decoding samples), if recorded."""
        path = self.manifest.vae.get("path")
        if not path:
            return None
        p = Path(path)
        return p if p.is_absolute() else self.folder / p
