"""Plain-language verdicts of a validation run: one line per magnification, the premises each check needs, and
whether the real reference is the model's own training data.

Every threshold a verdict uses is in `THRESHOLDS`, in this one place. A level's verdict is, in this order:

* **copies training data** — the memorisation check flagged synthetic tiles as near-copies of training tiles;
* **not realistic** — a classifier tells synthetic from real tiles: C2ST AUC ≥ 0.90 and its interval above 0.5;
* **distinguishable from real** — C2ST AUC ≥ 0.70 and its interval above 0.5;
* **similar, with differences** — the classifier does not separate them well, but at least one check (feature
  distance, stain, nuclei, sharpness, noise, diversity) differs beyond the real-vs-real reference;
* **no difference detected** — no check saw a difference beyond the real-vs-real reference at this sample size.

A check whose premise fails (no tissue, no nuclei found) is *not applicable* and takes no part in the verdict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

THRESHOLDS: dict[str, float] = {
    "c2st_not_realistic_auc": 0.90,  # AUC at or above: a classifier separates synthetic from real almost always
    "c2st_distinguishable_auc": 0.70,  # AUC at or above: it separates them often
    "min_tiles_per_side": 16,  # fewer tiles on either side: the verdict carries a "weak evidence" caveat
    "min_tissue_fraction": 0.05,  # a tile with at least this fraction of tissue pixels "has tissue"
    "min_share_with_tissue": 0.5,  # stain and nuclei statistics need tissue in at least this share of tiles
    "min_share_with_nuclei": 0.5,  # nuclei statistics need ≥ 1 nucleus in at least this share of tiles, each side
}
"""Verdict and premise thresholds (documented in the module docstring and the report's glossary)."""

ADVICE = {
    "copies training data": "do not use or share: synthetic tiles reproduce training tiles (possible patient data)",
    "not realistic": "do not use for reader studies, for training or testing diagnostic models, or as evidence "
                     "of any pathology",
    "distinguishable from real": "do not use where realism matters (reader studies, training diagnostic models) "
                                 "before reviewing the differences below",
    "similar, with differences": "usable for software and pipeline testing; review the listed differences before "
                                 "using it to train or test models",
    "no difference detected": "no automatic check here tells synthetic from real; this is not evidence of "
                              "diagnostic validity — a blinded reader study by a pathologist is the next step",
}
"""What a reader may do with the slides, per verdict."""

STAIN_STATISTICS = ("hematoxylin", "eosin")
NUCLEI_STATISTICS = ("nuclei_density", "nucleus_area")
HUMAN_NAMES = {
    "tissue_fraction": "tissue fraction", "hematoxylin": "hematoxylin stain intensity",
    "eosin": "eosin stain intensity", "nuclei_density": "nuclei density", "nucleus_area": "nucleus size",
    "sharpness": "sharpness", "noise_sigma": "noise", "frechet_distance": "Fréchet distance",
    "mmd": "MMD²", "diversity": "diversity (MS-SSIM)",
}
"""Human names of the metric keys in metrics.json."""


# --- magnification names --------------------------------------------------------------------------------------------
def magnification_name(mpp: float) -> str:
    """The nominal objective of a µm/px, by the usual convention 10 / (µm/px): 0.25 → "40×", 0.5 → "20×",
    8 → "1.25×"."""
    if not mpp > 0:
        msg = f"mpp must be > 0 µm/px; got {mpp}"
        raise ValueError(msg)
    mag = 10.0 / mpp
    if abs(mag - round(mag)) <= 0.02 * mag and mag >= 1:
        return f"{round(mag)}×"
    return f"{float(f'{mag:.3g}'):g}×"


def level_label(mpp: float | None, key: str = "") -> str:
    """"20× (0.5 µm/px)"; the level key when the µm/px is unknown (tile images without --tile-mpp)."""
    if mpp is None:
        return f"{key} (µm/px unknown)" if key else "µm/px unknown"
    return f"{magnification_name(mpp)} ({float(f'{mpp:.3g}'):g} µm/px)"


# --- premises -------------------------------------------------------------------------------------------------------
def _share(flags: NDArray[np.bool_]) -> float:
    return float(flags.mean()) if len(flags) else 0.0


def statistic_premises(real: Mapping[str, NDArray[np.float64]], synthetic: Mapping[str, NDArray[np.float64]]
                       ) -> dict[str, str | None]:
    """Why each per-tile statistic is not applicable, or None when it is.

    Stain intensities need tissue in at least half of the tiles on each side; nuclei density and size also need at
    least one nucleus in half of the tiles on each side — a median over tiles without nuclei compares nothing.

    Args:
        real, synthetic: `validation.morphology.tile_statistics` outputs (``nuclei_count`` included).
    """
    out: dict[str, str | None] = {name: None for name in real}
    tissue_need, nuclei_need = THRESHOLDS["min_share_with_tissue"], THRESHOLDS["min_share_with_nuclei"]
    reasons_tissue, reasons_nuclei = [], []
    for role, stats in (("real", real), ("synthetic", synthetic)):
        n = len(stats["tissue_fraction"])
        with_tissue = int((stats["tissue_fraction"] >= THRESHOLDS["min_tissue_fraction"]).sum())
        if n == 0 or with_tissue / n < tissue_need:
            reasons_tissue.append(f"no tissue in {n - with_tissue} of {n} {role} tiles")
        counts = stats.get("nuclei_count", np.zeros(n))
        with_nuclei = int((np.asarray(counts) > 0).sum())
        if n == 0 or with_nuclei / n < nuclei_need:
            reasons_nuclei.append(f"no nuclei found in {n - with_nuclei} of {n} {role} tiles")
    if reasons_tissue:
        reason = "; ".join(reasons_tissue) + f" (needs tissue in at least {tissue_need:.0%} of each side's tiles)"
        for name in (*STAIN_STATISTICS, *NUCLEI_STATISTICS):
            out[name] = reason
    if reasons_nuclei:
        reason = "; ".join(reasons_nuclei) + f" (needs nuclei in at least {nuclei_need:.0%} of each side's tiles)"
        for name in NUCLEI_STATISTICS:
            out[name] = out[name] or reason
    return out


def apply_premises(statistics: dict[str, dict[str, Any]], premises: Mapping[str, str | None]) -> None:
    """Mark each compared statistic (`validation.pipeline.compare_statistics` output) with its ``status``:
    "differs", "within the real-vs-real reference" or "not applicable: <reason>" (then never beyond reference)."""
    for name, entry in statistics.items():
        reason = premises.get(name)
        if reason:
            entry["applicable"], entry["beyond_reference"] = False, False
            entry["status"] = f"not applicable: {reason}"
        else:
            entry["applicable"] = True
            entry["status"] = "differs" if entry["beyond_reference"] else "within the real-vs-real reference"


# --- verdicts -------------------------------------------------------------------------------------------------------
def _differences(level: Mapping[str, Any]) -> list[str]:
    """Human names of the checks of a level that differ beyond the real-vs-real reference."""
    out = [HUMAN_NAMES[n] for n in ("frechet_distance", "mmd") if level["features"][n]["beyond_reference"]]
    out += [HUMAN_NAMES.get(n, n) for n, s in level["statistics"].items()
            if s.get("applicable", True) and s["beyond_reference"]]
    mac = level.get("stain_vectors", {})
    out += [f"Macenko {n} vector" for n in STAIN_STATISTICS
            if mac.get("available") and mac[f"{n}_angle_deg"]["beyond_reference"]]
    if level.get("diversity", {}).get("less_diverse_than_real"):
        out.append("diversity (less diverse than real)")
    return out


def level_verdict(level: Mapping[str, Any], key: str = "", *, reference_is_training: bool = False
                  ) -> dict[str, Any]:
    """The plain verdict of one magnification level of metrics.json.

    Returns:
        ``{"label", "verdict", "reason", "advice", "caveats", "text"}``; ``text`` is the one line the report leads
        with, e.g. "20× (0.5 µm/px): not realistic — a classifier tells synthetic from real tiles (C2ST AUC 0.97);
        do not use for …".
    """
    label = level_label(level.get("mpp"), key)
    c2st = level.get("c2st") or {}
    auc, low = c2st.get("auc"), c2st.get("low")
    separates = auc is not None and low is not None and low > 0.5
    auc_value = float(auc) if auc is not None else 0.5
    mem = level.get("memorisation")
    differences = _differences(level)
    if mem and mem.get("flagged"):
        verdict = "copies training data"
        reason = f"{len(mem['flagged'])} synthetic tile(s) are near-copies of training tiles"
    elif separates and auc_value >= THRESHOLDS["c2st_not_realistic_auc"]:
        verdict, reason = "not realistic", f"a classifier tells synthetic from real tiles (C2ST AUC {auc:.2f})"
    elif separates and auc_value >= THRESHOLDS["c2st_distinguishable_auc"]:
        verdict = "distinguishable from real"
        reason = f"a classifier often tells synthetic from real tiles (C2ST AUC {auc:.2f})"
    elif differences:
        verdict = "similar, with differences"
        clf = f"C2ST AUC {auc:.2f}" if auc is not None else "no classifier test"
        reason = f"{clf}, but {', '.join(differences)} differ beyond two halves of the real tiles"
    else:
        verdict = "no difference detected"
        clf = f"C2ST AUC {auc:.2f}" if auc is not None else "no classifier test"
        reason = f"{clf}; no check differs beyond two halves of the real tiles"
    caveats = []
    n_real, n_synth = level.get("n_real", 0), level.get("n_synthetic", 0)
    if min(n_real, n_synth) < THRESHOLDS["min_tiles_per_side"]:
        caveats.append(f"few tiles, {n_real} real and {n_synth} synthetic: weak evidence")
    if reference_is_training:
        caveats.append("the real reference is the model's training data, so this overstates realism")
    text = f"{label}: {verdict} — {reason}; {ADVICE[verdict]}" + (f" ({'; '.join(caveats)})" if caveats else "")
    return {"label": label, "verdict": verdict, "reason": reason, "advice": ADVICE[verdict], "caveats": caveats,
            "text": text}


# --- is the real reference the training data? ----------------------------------------------------------------------
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def bundled_training_slide() -> Path:
    """The built-in default model's training slide (`zwsi/default_model/slide/`)."""
    return Path(__file__).resolve().parents[1] / "zwsi" / "default_model" / "slide" / "CMU-1-Small-Region.svs"


def training_slides_of(provenance: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """Training slides a synthetic slide's provenance records (``extra.training_slides``: names and/or sha256), and
    the bundled slide when the slide was made by the built-in default model."""
    out: list[dict[str, str]] = []
    extra = (provenance or {}).get("extra") or {}
    for item in extra.get("training_slides") or []:
        out.append(dict(item) if isinstance(item, Mapping) else {"name": Path(str(item)).name})
    if extra.get("model") in ("default", "default_model"):  # the name `zwsi generate` records for the built-in model
        out.append({"name": bundled_training_slide().name, "why": "the built-in default model"})
    return out


def reference_overlap(real: Sequence[Path], provenances: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """A warning when a real reference slide is (or may be) the model's training data, else None.

    Detected when a real slide's SHA-256 or file name equals the bundled default model's training slide, or a
    training slide recorded in a synthetic slide's provenance.
    """
    bundled = bundled_training_slide()
    recorded = [t for p in provenances for t in training_slides_of(p)]
    for path in real:
        path = Path(path)
        if not path.is_file():
            continue
        # hash only what could match: a file of the bundled slide's size, or when provenance records hashes (a
        # gigapixel real slide is not read twice for nothing)
        same_size = bundled.is_file() and path.stat().st_size == bundled.stat().st_size
        bundled_sha = _sha256(bundled) if same_size else None
        sha = _sha256(path) if same_size or any("sha256" in t for t in recorded) else None
        why = None
        if bundled_sha is not None and sha == bundled_sha:
            why = (f"{path.name} is byte-for-byte the built-in default model's training slide "
                   f"(zwsi/default_model/slide/{bundled.name})")
        elif path.name == bundled.name:
            why = f"{path.name} has the name of the built-in default model's training slide"
        else:
            for t in recorded:
                if (sha is not None and t.get("sha256") == sha) or t.get("name") == path.name:
                    why = f"{path.name} is a training slide recorded in the synthetic slide's provenance"
                    break
        if why:
            if path.name == bundled.name or (bundled_sha is not None and sha == bundled_sha):
                why += "; the model trained on its top three quarters and only its bottom quarter is held out"
            return {"real": str(path), "reason": why,
                    "text": f"Warning: the real reference is (or overlaps) the model's training data — {why}. "
                            "Similarity to it overstates realism, and the memorisation check was skipped: it needs "
                            "real slides the model never saw (held-out reference) and the training slides given "
                            "separately (--training)."}
    return None
