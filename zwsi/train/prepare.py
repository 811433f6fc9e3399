"""Dataset preparation: slides matched to reports, tissue windows of every rung encoded by the VAE, report features.

For each slide (resumable, slide by slide and window by window):

1. plan the slide on the magnification ladder with the planner (`zwsi.planner.plan_slide`), so training windows
   sit on the same grid as generated ones;
2. detect tissue (`slide_io.detect_tissue`) and select the tissue windows of every level
   (`zwsi.planner.tissue_windows`); a slide trains only the rungs it resolves and spans (`trained_levels`: no
   window is made by upsampling, no layout window from a crop smaller than it), and only those rungs and the
   coarser ones their overviews read are encoded;
3. read each tissue window at its level's µm/px (plus a margin, cropped after encoding so windows join without
   edge effects), encode it with the VAE and write it into the slide's latent `WindowStore`; windows without
   tissue get the VAE latents of blank glass without a VAE call, as generation fills background windows;
4. encode the report's exact conditioning text (`reports.conditioning_text`: normalised, PHI policy applied,
   truncation reported) with the text encoder into the feature cache;
5. record slide, report, patient, fields and subtype in ``manifest.json`` (written atomically after each slide).

At the end patients are split into train/val/test (`assign_splits`): no patient is in two splits.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zwsi.planner import PlanConfig, SlidePlan, Window, plan_slide, tissue_windows
from zwsi.train.dataset import Manifest, SlideEntry, assign_splits

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TCGA_PATIENT = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}", re.IGNORECASE)
DEFAULT_SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
UPSAMPLE_TOLERANCE = 0.05
"""A rung up to 5 % finer than a slide's level 0 still trains on it (CMU-1 is 0.499 µm/px for a 0.5 µm/px rung)."""
ERRORS_FILE = "prepare-errors.tsv"
"""Slides skipped as unreadable: one line each, slide id, path and reason (tab-separated), appended run by run."""

# ---- inputs ------------------------------------------------------------------------------------------------------
def find_slides(spec: str | Path) -> list[Path]:
    """Slides named by a folder (every slide file in it, sorted), a text file listing paths, or one slide file.

    Raises:
        FileNotFoundError: the path does not exist, or a listed slide does not.
        ValueError: a folder or list holding no slide.
    """
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"--slides {path} does not exist; expected a folder, a list file or a slide")
    if path.is_dir():
        slides = sorted(p for p in path.iterdir() if p.suffix.lower() in SLIDE_SUFFIXES)
        if not slides:
            raise ValueError(f"folder {path} holds no slide files ({', '.join(SLIDE_SUFFIXES)})")
        return slides
    if path.suffix.lower() in (".txt", ".lst", ".list"):
        lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        slides = [Path(ln) if Path(ln).is_absolute() else path.parent / ln for ln in lines]
        missing = [str(s) for s in slides if not s.exists()]
        if missing:
            raise FileNotFoundError(f"slides listed in {path} do not exist: {missing[:10]}")
        if not slides:
            raise ValueError(f"slide list {path} is empty")
        return slides
    return [path]


def slide_id_of(path: Path) -> str:
    """The slide id: file name up to the first dot (TCGA: ``TCGA-XX-XXXX-01Z-00-DX1``)."""
    return path.name.split(".")[0]


def read_match_csv(path: str | Path) -> dict[str, str]:
    """A mapping CSV with columns ``slide`` (slide id or file name) and ``report_id``.

    Raises:
        ValueError: the columns are missing.
    """
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        cols = [c.strip().lower() for c in reader.fieldnames or []]
        if "slide" not in cols or "report_id" not in cols:
            raise ValueError(f"--match {path} needs columns 'slide' and 'report_id', found {reader.fieldnames}")
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    return {slide_id_of(Path(r["slide"])): r["report_id"] for r in rows}


def match_reports(slides: Sequence[Path], records: Sequence[Any], mapping: dict[str, str] | None = None) -> list[tuple[Path, Any]]:
    """Pair every slide with its report: by the mapping, else by report id == slide id, else by TCGA patient barcode.

    Raises:
        ValueError: slides without a report (all listed), or a TCGA patient with several reports.
    """
    by_id = {r.id: r for r in records}
    by_patient: dict[str, list[Any]] = {}
    for r in records:
        for key in {r.patient_id, r.id}:
            if key and TCGA_PATIENT.fullmatch(key):
                by_patient.setdefault(key.upper(), []).append(r)
    pairs, missing = [], []
    for slide in slides:
        sid = slide_id_of(slide)
        record = None
        if mapping is not None:
            rid = mapping.get(sid)
            record = by_id.get(rid) if rid else None
            if rid and record is None:
                raise ValueError(f"--match maps slide {sid!r} to report {rid!r}, which is not in the reports file")
        elif sid in by_id:
            record = by_id[sid]
        else:
            m = TCGA_PATIENT.match(sid)
            if m:
                found = by_patient.get(m.group().upper(), [])
                if len({id(r) for r in found}) > 1:
                    raise ValueError(f"slide {sid!r}: patient {m.group()} has {len(found)} reports; use --match")
                record = found[0] if found else None
        if record is None:
            missing.append(sid)
        else:
            pairs.append((slide, record))
    if missing:
        raise ValueError(
            f"{len(missing)} slide(s) have no report: {missing[:10]}; name reports by slide id, use TCGA barcodes, "
            f"or give --match CSV with columns slide,report_id"
        )
    return pairs


def patient_of(slide: Path, record: Any) -> str:
    """The patient: the report's patient id, else the slide's TCGA barcode, else the report id."""
    if record.patient_id:
        return str(record.patient_id)
    m = TCGA_PATIENT.match(slide_id_of(slide))
    return m.group().upper() if m else str(record.id)


def report_fields(record: Any) -> tuple[str, dict[str, str]]:
    """(subtype, fields): source metadata first, then what the text states (`reports.extract_fields`)."""
    from reports import extract_fields

    stated = {name: f.canonical for name, f in extract_fields(record.text).items()}
    meta = {k: v for k, v in (("site", record.site), ("histologic_type", record.histologic_type),
                              ("grade", record.grade), ("stage", record.stage)) if v}
    fields = {**{f"stated_{k}": v for k, v in stated.items()}, **meta}
    subtype = record.histologic_type or stated.get("histologic_type") or "unknown"
    return str(subtype), fields


# ---- the job ---------------------------------------------------------------------------------------------------------
def plan_for(height_um: float, width_um: float, final_mpp: float, coarsest_mpp: float, config: PlanConfig) -> SlidePlan:
    return plan_slide(height_um, width_um, final_mpp, seed=0, coarsest_mpp=coarsest_mpp, config=config)


def trained_levels(plan: SlidePlan, slide_mpp: float, height_um: float, width_um: float) -> list[int]:
    """The rungs (finest first) whose windows a slide of level-0 ``slide_mpp`` µm/px and extent ``height_um`` x
    ``width_um`` trains: those its pixels resolve (rung µm/px >= ``slide_mpp``, within `UPSAMPLE_TOLERANCE`: an
    upsampled window would teach blur at that rung) and that it spans (at least one window of the rung on each
    axis: a crop smaller than a layout window would teach the layout rung square islands of tissue in glass).

    A slide at 1 µm/px trains only the 2 µm/px rung of a 2 -> 0.5 ladder; a 250 µm crop at 0.23 µm/px only the
    0.5 µm/px rung (its windows' overviews still come from the encoded coarser rung).
    """
    window_px = plan.config.window_latents * plan.config.vae_factor
    return [lv.index for lv in plan.levels
            if lv.mpp >= slide_mpp * (1 - UPSAMPLE_TOLERANCE)
            and min(height_um, width_um) >= window_px * lv.mpp]


def _no_rung_reason(plan: SlidePlan, slide_mpp: float, height_um: float, width_um: float) -> str:
    window_px = plan.config.window_latents * plan.config.vae_factor
    return (f"no rung to train: level 0 is {slide_mpp:.3g} µm/px and the slide spans {width_um:.0f} x {height_um:.0f} "
            f"µm; the ladder's rungs are {', '.join(f'{lv.mpp:g}' for lv in plan.levels)} µm/px with windows of "
            f"{', '.join(f'{window_px * lv.mpp:g}' for lv in plan.levels)} µm "
            "(a rung needs level 0 at most its µm/px and at least one window of it)")


# long: one resumable pass over the slides (each slide's encoding is _encode_slide); 35 lines of docstring
def prepare_dataset(
    slides: Sequence[Path],
    records: Sequence[Any],
    out: str | Path,
    *,
    vae: Any,
    text_encoder: Any,
    vae_path: str | None,
    final_mpp: float = 0.5,
    coarsest_mpp: float = 8.0,
    plan_config: PlanConfig | None = None,
    mapping: dict[str, str] | None = None,
    split_fractions: dict[str, float] | None = None,
    split_seed: int = 0,
    phi_policy: str = "refuse",
    encode_margin: int = 8,
    batch_size: int = 8,
    tissue_mpp: float = 8.0,
    latent_dtype: str = "float16",
    grid_offsets: int = 1,
    progress: bool = True,
    slide_mpp: float | None = None,
    on_error: str = "skip",
) -> Manifest:
    """Prepare (or resume preparing) a training dataset in `out` (see the module docstring).

    Args:
        slides: slide files.
        records: report records (`reports.load_reports`).
        out: dataset folder (created; an existing one is resumed and must have the same geometry).
        vae: a `zwsi.vae.VAE`.
        text_encoder: a `zwsi.text.encoders.TextEncoder`.
        vae_path: the VAE folder recorded in the manifest (relative paths are inside `out`).
        final_mpp: µm/px of the finest rung; coarsest_mpp: the ladder stops before getting coarser.
        plan_config: window geometry (`PlanConfig`; the default is generation's 1024² windows).
        mapping: slide id -> report id (``--match``).
        split_fractions: train/val/test fractions of patients.
        split_seed: seed of the patient split.
        phi_policy: `reports.conditioning_text` policy; a refused report skips its slide (recorded with the reason).
        encode_margin: latents of context read around each window before encoding, then cropped.
        grid_offsets: N > 1 also plans each slide from N x N shifted origins (steps of 1/N of a finest-level
            window), each an entry ``<slide>_o<k>`` of the same patient: N² times the distinct training windows of
            a small slide set, all on generation's grid geometry.
        batch_size: windows per VAE call.
        tissue_mpp: µm/px of the tissue mask.
        latent_dtype: dtype of the latent stores.
        progress: show progress bars.
        slide_mpp: µm/px to assume for slides that store none (CLI ``--slide-mpp``); a slide without one is
            otherwise unreadable here.
        on_error: ``"skip"`` (default): an unreadable slide is skipped, its reason recorded in the manifest and
            in ``<out>/prepare-errors.tsv``, and the run goes on; ``"stop"``: the first one stops the run.

    Returns:
        The final manifest.
    """
    from reports import conditioning_text
    from reports.phi import PhiFoundError
    from slide_io import SlideError
    from zwsi.text.cache import EmbeddingCache

    if on_error not in ("skip", "stop"):
        raise ValueError(f"on_error={on_error!r}; expected 'skip' or 'stop' (CLI: --on-error)")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plan_config = plan_config or PlanConfig()
    if plan_config.latent_channels != vae.latent_channels or plan_config.vae_factor != vae.spatial_factor:
        raise ValueError(
            f"plan geometry latent_channels={plan_config.latent_channels}, vae_factor={plan_config.vae_factor} "
            f"does not fit the VAE ({vae.latent_channels} channels, factor {vae.spatial_factor})"
        )
    fractions = split_fractions or dict(DEFAULT_SPLITS)
    text_info = {"name": text_encoder.name, "fingerprint": text_encoder.fingerprint(),
                 "feature_dim": int(text_encoder.feature_dim), "max_length": int(text_encoder.max_length)}
    vae_info = {"path": vae_path, "latent_channels": vae.latent_channels, "spatial_factor": vae.spatial_factor,
                "scaling_factor": vae.scaling_factor, "shift_factor": vae.shift_factor, "latent_dtype": latent_dtype}
    manifest = _open_manifest(out, plan_config, final_mpp, coarsest_mpp, vae_info, text_info, fractions, split_seed)
    cache = EmbeddingCache(out / "features")
    pairs = match_reports(slides, records, mapping)
    from tqdm.auto import tqdm

    from zwsi.background import background_latents

    background = background_latents(vae, plan_config)  # the same blank-glass latents generation fills windows with

    if grid_offsets < 1:
        raise ValueError(f"grid_offsets must be >= 1, got {grid_offsets}")
    step_um = plan_config.window_latents * plan_config.vae_factor * final_mpp / grid_offsets
    origins = [(i * step_um, j * step_um) for i in range(grid_offsets) for j in range(grid_offsets)]
    jobs = [(p, r, k, o) for p, r in pairs for k, o in enumerate(origins)]
    canvases: dict[tuple[str, float], np.ndarray] = {}  # shifted grids of one slide slice one encoding per level
    for slide_path, record, k, origin in tqdm(jobs, desc="slides", unit="slide", disable=not progress):
        sid = slide_id_of(slide_path) + (f"_o{k}" if k else "")
        entry = manifest.entry(sid)
        if entry is not None and entry.status in ("done", "skipped"):
            continue
        subtype, fields = report_fields(record)
        entry = entry or SlideEntry(sid, str(slide_path), record.id, patient_of(slide_path, record),
                                    origin_um=[float(origin[0]), float(origin[1])])
        entry.subtype, entry.fields, entry.text_sha256 = subtype, fields, record.text_sha256
        if manifest.entry(sid) is None:
            manifest.slides.append(entry)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ct = conditioning_text(record, text_encoder, phi_policy=phi_policy)
            for w in caught:
                logger.warning("%s", w.message)
        except PhiFoundError as exc:
            entry.status, entry.reason = "skipped", f"report {record.id!r} refused by the PHI policy: {exc}"
            logger.warning("slide %s skipped: %s", sid, entry.reason)
            manifest.write(out)
            continue
        entry.n_report_tokens, entry.report_truncated = ct.n_tokens, ct.truncated
        features = cache.encode(text_encoder, [ct.text])[0]
        entry.features = str(cache.path(text_encoder, ct.text).relative_to(out))
        if features.shape[1] != text_info["feature_dim"]:
            raise ValueError(f"text encoder gave {features.shape[1]} features, expected {text_info['feature_dim']}")
        try:
            reason = _encode_slide(slide_path, entry, out, manifest, vae, background, encode_margin, batch_size,
                                   tissue_mpp, latent_dtype, progress, slide_mpp,
                                   canvases if grid_offsets > 1 and getattr(vae, "tiny", False) else None)
        except SlideError as exc:
            if on_error == "stop":
                raise
            reason = f"unreadable slide: {type(exc).__name__}: {exc}"
            logger.warning("slide %s skipped: %s", sid, reason)
            with (out / ERRORS_FILE).open("a", encoding="utf-8") as log:
                log.write(f"{sid}\t{slide_path}\t{reason}\n")
        entry.status, entry.reason = ("skipped", reason) if reason else ("done", "")
        manifest.write(out)

    patients = [s.patient_id for s in manifest.slides if s.status == "done"]
    split = assign_splits(patients, fractions, split_seed)
    for s in manifest.slides:
        s.split = split.get(s.patient_id, "")
    manifest.write(out)
    return manifest


def _open_manifest(out: Path, plan_config: PlanConfig, final_mpp: float, coarsest_mpp: float, vae_info: dict[str, Any],
                   text_info: dict[str, Any], fractions: dict[str, float], split_seed: int) -> Manifest:
    import dataclasses

    fresh = Manifest(dataclasses.asdict(plan_config), float(final_mpp), float(coarsest_mpp), vae_info, text_info,
                     dict(fractions), int(split_seed))
    if not (out / "manifest.json").is_file():
        fresh.write(out)
        return fresh
    old = Manifest.read(out)
    for name in ("plan", "final_mpp", "coarsest_mpp"):
        if getattr(old, name) != getattr(fresh, name):
            raise ValueError(f"{out} was prepared with {name}={getattr(old, name)}, not {getattr(fresh, name)}; "
                             f"use a new --out folder")
    if old.text_encoder.get("fingerprint") != text_info["fingerprint"]:
        raise ValueError(f"{out} was prepared with text encoder {old.text_encoder.get('name')!r} "
                         f"(another fingerprint); use a new --out folder")
    old.split_fractions, old.split_seed = dict(fractions), int(split_seed)
    return old


CANVAS_LIMIT = 256 << 20
"""Largest level (latent bytes, float32) encoded whole and kept for the shifted grids of ``--grid-offsets``."""


def _level_canvas(slide: Any, slide_path: Path, mpp: float, n_px: int, vae: Any,
                  canvases: dict[tuple[str, float], np.ndarray]) -> np.ndarray | None:
    """The whole level's latents ``(C, h, w)`` (the slide at ``mpp`` plus one window of white beyond its bottom and
    right edges), encoded once in overlapping tiles and cached; None when it would exceed `CANVAS_LIMIT`."""
    key = (str(slide_path), float(mpp))
    if key not in canvases:
        f = vae.spatial_factor
        w0, h0 = slide.dimensions
        w_px = (math.ceil(w0 * slide.mpp.x / mpp / n_px) + 1) * n_px
        h_px = (math.ceil(h0 * slide.mpp.y / mpp / n_px) + 1) * n_px
        if vae.latent_channels * (h_px // f) * (w_px // f) * 4 > CANVAS_LIMIT:
            return None
        pixels = slide.read_region_mpp((0, 0), mpp, (w_px, h_px))
        canvases[key] = vae.encode_tiled(pixels, tile=64, overlap=8).cpu().numpy()  # (C, h_px/f, w_px/f)
    return canvases[key]


def _encode_slide(
    slide_path: Path, entry: SlideEntry, out: Path, manifest: Manifest, vae: Any, background: np.ndarray,
    margin: int, batch_size: int, tissue_mpp: float, latent_dtype: str, progress: bool, slide_mpp: float | None = None,
    canvases: dict[tuple[str, float], np.ndarray] | None = None,
) -> str:
    """Encode one slide's windows into its store; returns a reason when the slide is skipped ("" when done).

    With ``canvases`` (shifted grids of a small slide, and an encoder without normalisation layers, such as TAEF1's,
    whose latents do not depend on the tiling), a level whose grid origin falls on whole latents is encoded once
    (`_level_canvas`) and every entry's windows are slices of it, instead of each window being encoded with its
    margin: the same latents away from tile borders, at 1/N² of the encoder's work."""
    from slide_io import WindowStore, detect_tissue, open_slide

    config = manifest.plan_config
    with open_slide(slide_path, mpp=slide_mpp) as slide:
        mpp = slide.mpp
        oy, ox = entry.origin_um
        width_um, height_um = slide.dimensions[0] * mpp.x - ox, slide.dimensions[1] * mpp.y - oy
        if min(width_um, height_um) <= 0:
            return f"origin {entry.origin_um} µm lies outside the slide"
        plan = plan_for(height_um, width_um, manifest.final_mpp, manifest.coarsest_mpp, config)
        entry.height_um, entry.width_um = height_um, width_um
        slide_mpp = max(mpp.x, mpp.y)
        entry.train_levels = trained_levels(plan, slide_mpp, height_um, width_um)
        if not entry.train_levels:
            return _no_rung_reason(plan, slide_mpp, height_um, width_um)
        encoded = [lv for lv in plan.levels if lv.index >= min(entry.train_levels)]  # overviews read coarser rungs
        mask = detect_tissue(slide, mpp=min(tissue_mpp, plan.levels[-1].mpp))
        tissue_mask = mask.mask[round(oy / mask.mpp.y):, round(ox / mask.mpp.x):]
        if not tissue_mask.any():
            return "no tissue detected"
        tissue = [tissue_windows(plan, lv.index, tissue_mask, (mask.mpp.x + mask.mpp.y) / 2) if lv in encoded else []
                  for lv in plan.levels]
        entry.tissue = [[[w.row, w.col] for w in ws] for ws in tissue]
        top = len(plan.levels) - 1  # the layout rung trains on glass windows too
        entry.train_levels = [i for i in entry.train_levels if i == top or tissue[i]]
        if not entry.train_levels:
            return "no tissue window at the rungs it resolves and spans"
        entry.store = f"latents/{entry.slide_id}.zarr"
        store_path = out / entry.store
        if (store_path / "zarr.json").is_file():
            store = WindowStore.open(store_path)
        else:
            store = WindowStore.create(store_path, "latent", channels=vae.latent_channels, dtype=latent_dtype,
                                       attrs={"slide_id": entry.slide_id, "source": str(slide_path),
                                              "latent_scaling": {"scaling_factor": vae.scaling_factor,
                                                                 "shift_factor": vae.shift_factor}})
        n = config.window_latents
        for lv in encoded:
            store.create_level(lv.index, lv.latent_shape, mpp=lv.mpp * config.vae_factor, grid=(n, n))
        pending = {lv.index: {(r0 // n, c0 // n) for r0, c0 in store.pending(lv.index)} for lv in encoded}
        bar = _progress(sum(len(p) for p in pending.values()), f"encode {entry.slide_id}", progress)
        for lv in encoded:
            keep = {(w.row, w.col) for w in tissue[lv.index]}
            canvas, (ly, lx) = None, (oy / (lv.mpp * config.vae_factor), ox / (lv.mpp * config.vae_factor))
            if canvases is not None and pending[lv.index] and ly == round(ly) and lx == round(lx):
                canvas = _level_canvas(slide, slide_path, lv.mpp, n * config.vae_factor, vae, canvases)
            ly, lx = round(ly), round(lx)
            for row in sorted({r for r, _ in pending[lv.index]}):  # one store write per row of windows
                cols = sorted(c for r, c in pending[lv.index] if r == row)
                band = store.read(lv.index, (row * n, (row + 1) * n), (0, lv.latent_shape[1])).astype(np.float32)
                encode = [plan.window(lv.index, row, c) for c in cols if (row, c) in keep]
                for c in cols:
                    if (row, c) not in keep:
                        band[:, :, c * n : (c + 1) * n] = background
                if canvas is not None:
                    for w in encode:
                        r0, c0 = ly + w.row * n, lx + w.col * n
                        band[:, :, w.col * n : (w.col + 1) * n] = canvas[:, r0 : r0 + n, c0 : c0 + n]
                    encode = []
                for i in range(0, len(encode), batch_size):
                    batch = encode[i : i + batch_size]
                    pixels = np.stack([_read_window(slide, plan, w, margin, entry.origin_um) for w in batch])
                    latents = vae.encode(pixels).cpu().numpy()  # (B, C, n + 2m, n + 2m)
                    for w, z in zip(batch, latents):
                        band[:, :, w.col * n : (w.col + 1) * n] = z[:, margin : margin + n, margin : margin + n]
                store.write_window(lv.index, row * n, 0, band)
                bar(len(cols))
        bar(None)
    return ""


def _read_window(slide: Any, plan: SlidePlan, window: Window, margin: int,
                 origin_um: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """RGB (n_px + 2 m_px)² of a window at its level's µm/px, with `margin` latents around it (white beyond the slide);
    the plan's (0, 0) sits at ``origin_um`` (y, x) in the slide."""
    cfg = plan.config
    level = plan.level(window.level)
    n_px, m_px = cfg.window_latents * cfg.vae_factor, margin * cfg.vae_factor
    mpp = slide.mpp
    x = ((window.col * n_px - m_px) * level.mpp + origin_um[1]) / mpp.x
    y = ((window.row * n_px - m_px) * level.mpp + origin_um[0]) / mpp.y
    return slide.read_region_mpp((round(x), round(y)), level.mpp, (n_px + 2 * m_px, n_px + 2 * m_px))


def _progress(total: int, desc: str, enabled: bool) -> Callable[[int | None], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="window", disable=not enabled, leave=False)

    def update(k: int | None) -> None:
        if k is None:
            bar.close()
        else:
            bar.update(k)

    return update
