"""`zwsi validate`: compare synthetic slides or tiles with real ones and write metrics.json and report.html.

Per magnification level it computes, with percentile bootstrap intervals:
* feature distances — Fréchet distance and linear MMD² (MONAI) on the chosen extractor's features;
* MS-SSIM among tile pairs in each set (diversity; MONAI), and SSIM/PSNR per tile when `paired`;
* pathology statistics — tissue fraction, H and E optical density (rgb2hed), Macenko stain vectors (MONAI),
  nuclei density and size, sharpness and noise (scikit-image / scipy);
* memorisation — nearest training tile of each synthetic tile against held-out real tiles.
Each comparison also gets a *real-vs-real* reference: two disjoint halves of the real tiles compared the same way,
so a reader can tell a difference the metric always shows from one the synthetic data causes. `findings` says, in
words, which checks saw a difference beyond that reference. Slides also get a seam score on the window grid and
cross-magnification consistency between their pyramid levels.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from validation.bootstrap import Interval, bootstrap_interval, permutation_pvalue
from validation.c2st import classifier_two_sample_test
from validation.fid import frechet_distance
from validation.image_metrics import mmd, ms_ssim_pairs, paired_ssim_psnr
from validation.inputs import TileSet, load_tileset
from validation.memorisation import MemorisationReport, memorisation_check
from validation.morphology import STATISTICS, UNITS, tile_statistics
from validation.seams import N_REF, REF_STEP
from validation.stain import macenko_vectors, mean_stain_vectors, stain_angles
from validation.summary import conditioning_rows, read_provenances, summary_markdown
from validation.verdict import (
    THRESHOLDS,
    apply_premises,
    level_label,
    level_verdict,
    reference_overlap,
    statistic_premises,
)

PSNR_CAP = 100.0  # identical tiles have infinite PSNR; report this many dB instead


@dataclass
class ValidationConfig:
    """Options of a validation run (the `zwsi validate` flags)."""

    features: str = "efficientnet_lite0"
    features_weights: str | None = None
    features_allow_pickle: bool = False
    mpps: Sequence[float] | None = None
    tile_size: int = 224
    max_tiles: int = 64
    tile_mpp: float | None = None
    paired: bool = False
    window: int | None = None  # None: the synthetic slide's generation windows (its provenance), else 1024
    n_resamples: int = 200
    ms_ssim_pairs: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tile_size < 161:
            msg = f"tile_size={self.tile_size} must be at least 161 px (MS-SSIM's five scales need it)"
            raise ValueError(msg)
        if self.max_tiles < 4:
            msg = f"max_tiles={self.max_tiles} must be at least 4 (the real-vs-real reference splits the real tiles)"
            raise ValueError(msg)


@dataclass
class ValidationResult:
    """metrics (what metrics.json holds) and what the HTML report shows beside it."""

    metrics: dict[str, Any]
    real: TileSet
    synthetic: TileSet
    training: TileSet | None
    memorisation: dict[str, MemorisationReport] = field(default_factory=dict)
    hed_pixels: dict[str, dict[str, NDArray[np.float64]]] = field(default_factory=dict)
    statistics: dict[str, dict[str, dict[str, NDArray[np.float64]]]] = field(default_factory=dict)


# --- per-level comparisons -------------------------------------------------------------------------------------------
def _interval(fn: Callable[..., float], samples: Sequence[Any], config: ValidationConfig, offset: int = 0,
              method: str = "percentile") -> Interval:
    return bootstrap_interval(fn, samples, n_resamples=config.n_resamples, seed=config.seed + offset, method=method)


def _split(n: int, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def _log_median_ratio(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """log(median(b) / median(a)); statistics here are ≥ 0, the 1e-9 keeps an all-zero sample finite."""
    return float(np.log((np.nanmedian(b) + 1e-9) / (np.nanmedian(a) + 1e-9)))


def span_coordinates(x: NDArray[np.float64], y: NDArray[np.float64]
                     ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Coordinates of both samples in an orthonormal basis of the span of all their rows (r ≤ n + m dimensions).

    Every inner product between rows is kept, so the Fréchet distance and the linear MMD² of any subsets are
    exactly the same in these coordinates; the bootstrap then costs O((n + m)²) per resample instead of O(n·d).
    """
    q, _ = np.linalg.qr(np.concatenate([x, y]).T)  # (d, r) orthonormal columns
    return x @ q, y @ q


def compare_features(real: NDArray[np.float64], synth: NDArray[np.float64], config: ValidationConfig
                     ) -> dict[str, dict[str, Any]]:
    """Fréchet distance and MMD² real vs synthetic with a bootstrap interval and a permutation p-value, beside the
    real-vs-real reference (two disjoint halves of the real tiles) and a size-matched real-half vs synthetic value.

    `beyond_reference` is the permutation test at 5%: relabelling real and synthetic tiles at random gives a
    distance as large as the observed one in fewer than 5% of permutations.
    """
    real, synth = span_coordinates(real, synth)
    h1, h2 = _split(len(real), config.seed)
    rng = np.random.default_rng(config.seed + 1)
    sub = synth[np.sort(rng.choice(len(synth), min(len(h2), len(synth)), replace=False))]
    out = {}
    for name, fn in (("frechet_distance", frechet_distance), ("mmd", mmd)):
        full = _interval(fn, (real, synth), config, method="basic")
        reference = _interval(fn, (real[h1], real[h2]), config, 1, method="basic")
        if name == "frechet_distance":  # a distance: the basic interval's lower end can fall below 0
            full, reference = (replace(iv, low=max(iv.low, 0.0)) for iv in (full, reference))
        p_value = permutation_pvalue(fn, real, synth, n_permutations=config.n_resamples, seed=config.seed + 2)
        out[name] = {**full.to_dict(), "p_value": p_value, "real_vs_real": reference.to_dict(),
                     "matched": float(fn(real[h1], sub)), "beyond_reference": bool(p_value < 0.05)}
    return out


def compare_statistics(real: dict[str, NDArray[np.float64]], synth: dict[str, NDArray[np.float64]],
                       config: ValidationConfig) -> dict[str, dict[str, Any]]:
    """Per statistic: medians over tiles and the ratio synthetic / real of the medians with its interval, beside
    the same ratio between two disjoint halves of the real tiles.

    Ratios of medians (computed as log-ratios), because the statistics are positive and heavy-tailed across
    tissue types: on the shared real tiles sharpness spans 190-4500, and two halves of them differ 3.6-fold in
    median sharpness, so an absolute difference would hide a blur that divides sharpness by 25.
    A statistic is `beyond_reference` when the ratio's interval excludes 1 and it departs from 1 by more than the
    real-vs-real ratio and by more than 10% (a JPEG q90 re-encode moved medians by up to 9% on 8 tiles).
    """
    out = {}
    for i, name in enumerate(STATISTICS):
        r, s = real[name], synth[name]
        h1, h2 = _split(len(r), config.seed)
        log_ratio = _interval(_log_median_ratio, (r, s), config, 10 + i)
        reference = _interval(_log_median_ratio, (r[h1], r[h2]), config, 30 + i)
        excludes_one = log_ratio.low > 0 or log_ratio.high < 0
        differs = excludes_one and abs(log_ratio.value) > max(abs(reference.value), np.log(1.10))
        out[name] = {"unit": UNITS[name], "real_median": float(np.nanmedian(r)),
                     "synthetic_median": float(np.nanmedian(s)),
                     "ratio": {"value": float(np.exp(log_ratio.value)), "low": float(np.exp(log_ratio.low)),
                               "high": float(np.exp(log_ratio.high))},
                     "real_vs_real_ratio": {"value": float(np.exp(reference.value)),
                                            "low": float(np.exp(reference.low)), "high": float(np.exp(reference.high))},
                     "beyond_reference": bool(differs), "relative_difference": float(np.expm1(log_ratio.value))}
    return out


def compare_stain_vectors(real: NDArray[np.uint8], synth: NDArray[np.uint8], config: ValidationConfig
                          ) -> dict[str, Any]:
    """Angles between mean Macenko H and E vectors (MONAI ExtractHEStains) of real and synthetic tiles."""
    rv = [v for v in (macenko_vectors(t) for t in real) if v is not None]
    sv = [v for v in (macenko_vectors(t) for t in synth) if v is not None]
    if len(rv) < 4 or len(sv) < 2:
        return {"available": False, "reason": f"Macenko vectors found in {len(rv)} real and {len(sv)} synthetic tiles"}
    ra, sa = np.stack(rv), np.stack(sv)
    h1, h2 = _split(len(ra), config.seed)
    out: dict[str, Any] = {"available": True, "real_vectors": mean_stain_vectors(ra).tolist(),
                           "synthetic_vectors": mean_stain_vectors(sa).tolist()}
    for j, stain in enumerate(("hematoxylin", "eosin")):
        def angle(a: NDArray[np.float64], b: NDArray[np.float64], j: int = j) -> float:
            return stain_angles(mean_stain_vectors(a), mean_stain_vectors(b))[j]

        full = _interval(angle, (ra, sa), config, 50 + j)
        reference = _interval(angle, (ra[h1], ra[h2]), config, 60 + j)
        out[f"{stain}_angle_deg"] = {**full.to_dict(), "real_vs_real": reference.to_dict(),
                                     "beyond_reference": bool(full.low > reference.high)}
    return out


def compare_diversity(real: NDArray[np.uint8], synth: NDArray[np.uint8], config: ValidationConfig) -> dict[str, Any]:
    """Mean MS-SSIM among pairs of real tiles and among pairs of synthetic tiles (lower = more diverse)."""
    r = ms_ssim_pairs(real, n_pairs=config.ms_ssim_pairs, seed=config.seed)
    s = ms_ssim_pairs(synth, n_pairs=config.ms_ssim_pairs, seed=config.seed)
    ri = _interval(np.mean, (r,), config, 70) if len(r) > 1 else None
    si = _interval(np.mean, (s,), config, 71) if len(s) > 1 else None
    less_diverse = bool(ri is not None and si is not None and si.low > ri.high)
    return {"real": ri.to_dict() if ri else None, "synthetic": si.to_dict() if si else None,
            "less_diverse_than_real": less_diverse}


def compare_paired(real: NDArray[np.uint8], synth: NDArray[np.uint8], config: ValidationConfig) -> dict[str, Any]:
    """SSIM and PSNR of each synthetic tile against the real tile read at the same place (reconstructions)."""
    ssim, psnr = paired_ssim_psnr(real, synth)
    psnr = np.minimum(psnr, PSNR_CAP)
    return {"ssim": _interval(np.mean, (ssim,), config, 80).to_dict(),
            "psnr_db": _interval(np.mean, (psnr,), config, 81).to_dict(), "psnr_cap_db": PSNR_CAP}


# --- findings in words ----------------------------------------------------------------------------------------------
def findings(metrics: dict[str, Any]) -> list[str]:
    """Plain-language list of the differences the checks saw beyond the real-vs-real reference."""
    out = []
    for key, level in metrics["levels"].items():
        where = f"[{level.get('label', key)}]"
        feats = level["features"]
        for name, label in (("frechet_distance", "Fréchet distance"), ("mmd", "MMD²")):
            m = feats[name]
            if m["beyond_reference"]:
                out.append(f"{where} feature distribution differs: {label} {m['value']:.4g} (real vs real halves "
                           f"{m['real_vs_real']['value']:.4g}), permutation p = {m['p_value']:.3g}")
        c2st = level.get("c2st")
        if c2st and c2st["low"] > 0.5:
            out.append(f"{where} a classifier tells synthetic from real tiles: AUC {c2st['auc']:.2f} "
                       f"({100 * c2st['level']:.0f}% interval {c2st['low']:.2f}-{c2st['high']:.2f}; 0.5 = "
                       f"indistinguishable)")
        stats = level["statistics"]
        stain = [n for n in ("hematoxylin", "eosin") if stats[n]["beyond_reference"]]
        mac = level["stain_vectors"]
        stain += [f"Macenko {n} vector" for n in ("hematoxylin", "eosin")
                  if mac.get("available") and mac[f"{n}_angle_deg"]["beyond_reference"]]
        if stain:
            out.append(f"{where} stain shift: " + ", ".join(_describe(n, stats, mac) for n in stain))
        if stats["sharpness"]["beyond_reference"]:
            rel = stats["sharpness"]["relative_difference"]
            kind = "blur" if rel < 0 else "extra high-frequency content (sharpening or noise)"
            out.append(f"{where} {kind}: sharpness {100 * rel:+.0f}% vs real")
        if stats["noise_sigma"]["beyond_reference"]:
            rel = stats["noise_sigma"]["relative_difference"]
            kind = "noise" if rel > 0 else "smoothing (less noise than real)"
            out.append(f"{where} {kind}: estimated noise σ {100 * rel:+.0f}% vs real")
        for n, label in (("nuclei_density", "nuclei density"), ("nucleus_area", "nucleus size"),
                         ("tissue_fraction", "tissue fraction")):
            if stats[n]["beyond_reference"]:
                out.append(f"{where} {label} differs: {100 * stats[n]['relative_difference']:+.0f}% vs real")
        if level["diversity"]["less_diverse_than_real"]:
            out.append(f"{where} synthetic tiles are less diverse than real ones (higher mean MS-SSIM)")
        mem = level.get("memorisation")
        if mem and mem["flagged"]:
            out.append(f"{where} {len(mem['flagged'])} synthetic tile(s) are near-copies of training tiles")
    for role in ("synthetic",):
        for slide in metrics["slides"].get(role, []):
            for key, seam in slide["seams"].items():
                real_scores = [s["seams"][key]["score"] for s in metrics["slides"].get("real", []) if key in s["seams"]]
                if seam["flagged"]:
                    first = seam["flagged"][0]
                    out.append(f"[{metrics['levels'].get(key, {}).get('label', key)}] seams in {slide['name']}: {len(seam['flagged'])} border segment(s) at or above "
                               f"ratio {seam['flag_ratio']}, worst at {first['axis']}={first['position']} px "
                               f"[{first['start']}, {first['end']}) (ratio {first['ratio']:.2f}); seam score "
                               f"{seam['score']:.3f}" + (f" vs real {real_scores[0]:.3f}" if real_scores else ""))
            for lc in slide["level_consistency"]:
                if lc["psnr"] < 25.0:
                    out.append(f"levels {lc['fine']}→{lc['fine'] + 1} of {slide['name']} disagree: PSNR "
                               f"{lc['psnr']:.1f} dB, SSIM {lc['ssim']:.3f}")
    return out


def _describe(name: str, stats: dict[str, Any], mac: dict[str, Any]) -> str:
    if name.startswith("Macenko"):
        stain = name.split()[1]
        return f"{name} turned {mac[f'{stain}_angle_deg']['value']:.1f}°"
    return f"{name} OD {100 * stats[name]['relative_difference']:+.0f}%"


# --- the run --------------------------------------------------------------------------------------------------------
MIN_SEAM_WINDOW = 2 * REF_STEP * N_REF
"""The smallest window `validation.seams.seam_report` measures (px)."""


def generation_window(slide: Any) -> tuple[int, float] | None:
    """(window side in px, at µm/px) of the windows a Z-WSI slide was generated in, from its provenance's plan; None
    for slides without one. Every pyramid level is made from level 0, so only level 0's windows leave borders."""
    plan = ((getattr(slide, "provenance", None) and slide.provenance.extra) or {}).get("plan")
    if not plan:
        return None
    return int(plan["window_tokens"]) * int(plan["patch_size"]) * int(plan["vae_factor"]), float(slide.mpp.x)


def _slide_checks(tileset: TileSet, mpps: Sequence[float], window: int | None, seed: int,
                  generated: tuple[int, float] | None = None) -> list[dict[str, Any]]:
    """Seams and level consistency of each slide. The seam grid is ``window`` px at every µm/px when given, else the
    windows the synthetic slides were generated in (``generated``, or the slide's own provenance), scaled to each
    µm/px — so every generated border is checked, and real slides are measured on the same grid as a reference."""
    import slide_io
    from validation.inputs import level_key
    from validation.slide_checks import slide_level_consistency, slide_seam_report

    out = []
    for path in tileset.slides:
        with slide_io.open_slide(path) as slide:
            seams = {}
            grid = generation_window(slide) or generated
            for mpp in mpps:
                side = window if window is not None else (round(grid[0] * grid[1] / mpp) if grid else 1024)
                if side < MIN_SEAM_WINDOW:  # a window of a few pixels at a coarse µm/px has no measurable border
                    continue
                rep = slide_seam_report(slide, mpp, side, seed=seed)
                if math.isfinite(rep.score):
                    seams[level_key(mpp)] = rep.to_dict() | {"window": side, "mpp": mpp}
            out.append({"name": path.name, "path": str(path), "dimensions": list(slide.dimensions),
                        "level_count": slide.level_count, "mpp": slide.mpp.x, "synthetic": slide.is_synthetic,
                        "seams": seams,
                        "level_consistency": [lc.to_dict() for lc in slide_level_consistency(slide, seed=seed)]})
    return out


def generation_window_of(path: Path) -> tuple[int, float] | None:
    """`generation_window` of the slide at ``path``."""
    import slide_io

    with slide_io.open_slide(path) as slide:
        return generation_window(slide)


# long: the one validation entry point: a 20-line docstring, then one pass over the shared levels
def run_validation(real: Sequence[str | Path], synthetic: Sequence[str | Path], out_dir: str | Path, *,
                   training: Sequence[str | Path] | None = None, config: ValidationConfig | None = None,
                   progress: bool = True, write_html: bool = True) -> ValidationResult:
    """Compare synthetic with real data; write `metrics.json` and `report.html` into `out_dir`.

    Args:
        real: held-out real slides / tile folders / images.
        synthetic: generated slides / tiles.
        out_dir: output folder (created).
        training: the training tiles or slides, for the memorisation check.
        config: options (defaults: EfficientNet-Lite0 features, 224 px tiles, 64 per level).
        progress: print progress lines with rich.
        write_html: also render the HTML report.

    Returns:
        The metrics and the tiles the report shows.

    Raises:
        ValueError: inputs without a common magnification level, too few tiles, or bad options.
    """
    from rich.console import Console

    from validation.features import load_extractor
    from validation.inputs import expand_paths

    config = config or ValidationConfig()
    console = Console(stderr=True, quiet=not progress)
    out = Path(out_dir)
    check_output_folder(out)
    for role, paths in (("real", real), ("synthetic", synthetic), ("training", training)):
        if paths:
            expand_paths(paths, role=role)  # every input exists and is a slide or an image, before any work
    kw: dict[str, Any] = {"mpps": config.mpps, "tile_size": config.tile_size, "max_tiles": config.max_tiles,
          "tile_mpp": config.tile_mpp, "seed": config.seed}
    # no live status line when quiet: in a notebook rich would leave an empty output widget behind
    status = console.status if progress else (lambda _: contextlib.nullcontext())
    with status("reading real tiles"):
        real_set = load_tileset("real", real, **kw)
        if config.mpps is None and real_set.slides:
            # the synthetic and training slides are cut at the real slide's ladder
            kw["mpps"] = [lv.mpp for lv in real_set.levels.values() if lv.mpp is not None]
    with status("reading synthetic tiles"):
        locations = {k: lv.locations for k, lv in real_set.levels.items() if lv.locations} if config.paired else None
        synth_set = load_tileset("synthetic", synthetic, locations=locations, **kw)
    train_set = load_tileset("training", training, **kw) if training else None
    shared = [k for k in real_set.levels if k in synth_set.levels]
    if not shared:
        msg = (f"real levels {sorted(real_set.levels)} and synthetic levels {sorted(synth_set.levels)} have none in "
               "common; give tile images their µm/px (--tile-mpp) or the same kind of input on both sides")
        raise ValueError(msg)
    provenances = read_provenances(synth_set.slides)
    warning = reference_overlap(real_set.slides, provenances)
    extractor = load_extractor(config.features, config.features_weights, allow_pickle=config.features_allow_pickle)
    console.log(f"features: {extractor.name}")
    result = ValidationResult({}, real_set, synth_set, train_set)
    levels: dict[str, Any] = {}
    for key in shared:
        r, s = real_set.levels[key], synth_set.levels[key]
        if len(r.tiles) < 4 or len(s.tiles) < 2:
            console.log(f"[{key}] skipped: {len(r.tiles)} real and {len(s.tiles)} synthetic tiles (need ≥ 4 and ≥ 2)")
            continue
        console.log(f"[{key}] {len(r.tiles)} real, {len(s.tiles)} synthetic tiles: features")
        rf, sf = extractor(r.tiles), extractor(s.tiles)
        mpp = r.mpp or s.mpp or 0.5
        console.log(f"[{key}] statistics")
        rs, ss = tile_statistics(r.tiles, mpp), tile_statistics(s.tiles, mpp)
        result.statistics[key] = {"real": rs, "synthetic": ss}
        from validation.stain import hed_tissue_pixels

        result.hed_pixels[key] = {"real": hed_tissue_pixels(r.tiles), "synthetic": hed_tissue_pixels(s.tiles)}
        level: dict[str, Any] = {
            "mpp": r.mpp, "label": level_label(r.mpp or s.mpp, key), "n_real": len(r.tiles), "n_synthetic": len(s.tiles), "tile_size": config.tile_size,
            "mpp_assumed_for_nuclei": r.mpp is None and s.mpp is None,
            "features": compare_features(rf, sf, config),
            "diversity": compare_diversity(r.tiles, s.tiles, config),
            "statistics": compare_statistics(rs, ss, config),
            "stain_vectors": compare_stain_vectors(r.tiles, s.tiles, config),
            "c2st": classifier_two_sample_test(rf, sf, seed=config.seed, n_resamples=config.n_resamples),
        }
        apply_premises(level["statistics"], statistic_premises(rs, ss))
        if config.paired:
            if r.tiles.shape != s.tiles.shape:
                msg = f"[{key}] paired comparison needs the same tiles on both sides; got {r.tiles.shape} and {s.tiles.shape}"
                raise ValueError(msg)
            level["paired"] = compare_paired(r.tiles, s.tiles, config)
        if warning is None and train_set is not None and key in train_set.levels and len(train_set.levels[key].tiles):
            mem = memorisation_check(sf, rf, extractor(train_set.levels[key].tiles))
            result.memorisation[key] = mem
            level["memorisation"] = mem.to_dict()
        levels[key] = level
    if not levels:
        msg = "no level had enough tiles (≥ 4 real and ≥ 2 synthetic); lower --tile-size or add inputs"
        raise ValueError(msg)
    slide_mpps = [lv.mpp for k, lv in real_set.levels.items() if k in levels and lv.mpp is not None]
    console.log("slide checks: seams and level consistency")
    synthetic_checks = _slide_checks(synth_set, slide_mpps, config.window, config.seed)
    grid = next((generation_window_of(p) for p in synth_set.slides if generation_window_of(p)), None)
    slides = {"real": _slide_checks(real_set, slide_mpps, config.window, config.seed, generated=grid),
              "synthetic": synthetic_checks}
    result.metrics = {
        "feature_extractor": extractor.name,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.__dict__.items()},
        "inputs": {role: [str(p) for p in (ts.slides + ts.images)] for role, ts in
                   (("real", real_set), ("synthetic", synth_set), ("training", train_set)) if ts is not None},
        "levels": levels,
        "slides": slides,
        "thresholds": dict(THRESHOLDS),
        "reference_warning": warning,
        "memorisation_status": memorisation_status(warning, train_set, result.memorisation),
        "conditioning": [{"slide": p.name, "rows": conditioning_rows(prov, extractor.name)}
                         for p, prov in zip(synth_set.slides, provenances)],
        "verdicts": {key: level_verdict(level, key, reference_is_training=warning is not None)
                     for key, level in levels.items()},
    }
    result.metrics["findings"] = findings(result.metrics)
    out.mkdir(parents=True, exist_ok=True)  # only now: a failed run leaves no empty folder behind
    write_json_atomic(out / "metrics.json", result.metrics)
    write_text_atomic(out / "summary.md", summary_markdown(result.metrics))
    if write_html:
        from validation.html_report import render_report

        write_text_atomic(out / "report.html", render_report(result))
    for verdict in result.metrics["verdicts"].values():
        console.log(verdict["text"])
    if warning:
        console.log(warning["text"])
    for line in result.metrics["findings"] or ["no difference beyond the real-vs-real reference"]:
        console.log(line)
    return result


def memorisation_status(warning: dict[str, Any] | None, training: TileSet | None,
                        reports: dict[str, MemorisationReport]) -> str:
    """One sentence on whether the memorisation check ran, and why not."""
    if warning is not None:
        return ("skipped: the real reference is the model's training data, so there is no held-out real slide to "
                "compare against")
    if training is None:
        return "not run: no training slides given (--training), so near-copies of training tiles cannot be looked for"
    if not reports:
        return "not run: the training slides gave no tiles at the compared magnifications"
    flagged = sum(len(r.flagged) for r in reports.values())
    return f"ran at {len(reports)} magnification(s): {flagged} synthetic tile(s) flagged as near-copies"


def check_output_folder(out: Path) -> None:
    """Refuse an output that cannot be written, before any work: a file in its place, or a parent folder that is a
    file, read-only or not ours to write.

    Raises:
        ValueError: naming the path and why.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a folder (new or existing) for metrics.json")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {out}: {parent} is a file, so no folder can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not writable (read-only or another user's folder)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """metrics as strict JSON (non-finite numbers become null), written atomically."""
    write_text_atomic(path, json.dumps(_jsonable(data), indent=2, allow_nan=False))
