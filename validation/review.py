"""Side-by-side review of a real and a synthetic slide for clinicians: summaries, thumbnails, matched zooms."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from validation.inputs import thumbnail_tissue


def slide_summary(path: str | Path) -> dict[str, Any]:
    """What a reviewer needs to know about a slide: size, levels, µm/px, whether it says it is synthetic."""
    import slide_io

    with slide_io.open_slide(path) as slide:
        prov = slide.provenance
        return {"file": Path(path).name, "vendor": slide.vendor, "dimensions": slide.dimensions,
                "levels": slide.level_count, "mpp": round(slide.mpp.x, 4), "synthetic": slide.is_synthetic,
                "provenance": None if prov is None else {k: v for k, v in vars(prov).items() if v not in (None, "")}}


def tissue_centre(path: str | Path) -> tuple[int, int]:
    """Level-0 (x, y) of the tissue pixel nearest the centre of mass of the tissue (thumbnail estimate)."""
    import slide_io

    with slide_io.open_slide(path) as slide:
        mask = thumbnail_tissue(slide)
        w0, h0 = slide.dimensions
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        return w0 // 2, h0 // 2
    r, c = rows.mean(), cols.mean()
    i = int(np.argmin((rows - r) ** 2 + (cols - c) ** 2))
    return int(cols[i] * w0 / mask.shape[1]), int(rows[i] * h0 / mask.shape[0])


def matched_crops(path: str | Path, centre: tuple[int, int], mpps: Sequence[float], size: int = 320
                  ) -> list[NDArray[np.uint8]]:
    """Crops of `size` px centred on the level-0 point `centre`, at each µm/px in `mpps`."""
    import slide_io

    out = []
    with slide_io.open_slide(path) as slide:
        base = slide.mpp.x
        for mpp in mpps:
            half = size * mpp / base / 2
            out.append(slide.read_region_mpp((round(centre[0] - half), round(centre[1] - half)), mpp, (size, size)))
    return out


def side_by_side_figure(real: str | Path, synthetic: str | Path, mpps: Sequence[float] | None = None,
                        centre: tuple[int, int] | None = None, size: int = 320) -> Any:
    """A matplotlib figure: thumbnails of both slides, then crops at three magnifications, real above synthetic.

    Args:
        real, synthetic: slide paths.
        mpps: three µm/px (default 1×, 2×, 4× the real slide's).
        centre: level-0 point to zoom on in both slides (default: each slide's own tissue centre).
        size: crop side in px.
    """
    from matplotlib.figure import Figure

    import slide_io

    with slide_io.open_slide(real) as slide:
        base = slide.mpp.x
        thumbs = [np.asarray(slide.get_thumbnail((512, 512)))]
    with slide_io.open_slide(synthetic) as slide:
        thumbs.append(np.asarray(slide.get_thumbnail((512, 512))))
    mpps = list(mpps) if mpps else [base, 2 * base, 4 * base]
    # one level-0 point for both when given (a paired slide); else each slide's own tissue centre, since a
    # generated slide need not share the real slide's size or layout
    rows = [matched_crops(path, centre or tissue_centre(path), mpps, size) for path in (real, synthetic)]
    fig = Figure(figsize=(4 * (1 + len(mpps)), 8))
    axes = fig.subplots(2, 1 + len(mpps))
    for r, (label, thumb, crops) in enumerate(zip(("real", "synthetic"), thumbs, rows)):
        axes[r, 0].imshow(thumb)
        axes[r, 0].set_title(f"{label}: {Path(real if r == 0 else synthetic).name}")
        for c, (mpp, crop) in enumerate(zip(mpps, crops), start=1):
            axes[r, c].imshow(crop)
            axes[r, c].set_title(f"{label}, {mpp:.2f} µm/px")
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    return fig


def summary_markdown(summaries: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of `slide_summary` results, one column per slide, in words and units (the provenance of a
    synthetic slide is its own table: `provenance_markdown`)."""
    from validation.verdict import level_label

    rows = [("scanner / writer", lambda s: s["vendor"]),
            ("size (px)", lambda s: f"{s['dimensions'][0]:,} × {s['dimensions'][1]:,}"),
            ("size (mm)", lambda s: f"{s['dimensions'][0] * s['mpp'] / 1000:.2f} × "
                                    f"{s['dimensions'][1] * s['mpp'] / 1000:.2f}"),
            ("full resolution", lambda s: level_label(s["mpp"])),
            ("pyramid levels", lambda s: s["levels"]),
            ("synthetic (marked in the file)", lambda s: "yes" if s["synthetic"] else "no")]
    lines = ["| | " + " | ".join(str(s["file"]) for s in summaries) + " |", "|---" * (len(summaries) + 1) + "|"]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(str(fn(s)).replace("|", "/") for s in summaries) + " |")
    return "\n".join(lines)


def provenance_markdown(path: str | Path, feature_extractor: str | None = None) -> str:
    """What made a synthetic slide (report text, seed, model, ...) as a two-column Markdown table; fields the slide
    does not record say "not recorded"."""
    from validation.summary import conditioning_rows, read_provenances

    rows = conditioning_rows(read_provenances([path])[0], feature_extractor)
    lines = ["| field | value |", "|---|---|"]
    lines += [f"| {k} | " + v.replace("|", "/").replace("\n", "<br>") + " |" for k, v in rows]
    return "\n".join(lines)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """A validation run (`run_validation(...).metrics`) in words: the verdicts, the training-data warning, then per
    magnification each measure by its human name and unit, beside the real-vs-real reference and its status."""
    from validation.summary import human_name

    lines = ["**Verdict**", ""]
    lines += [f"- **{v['label']}: {v['verdict']}** — {v['reason']}; {v['advice']}"
              + (f" ({'; '.join(v['caveats'])})" if v["caveats"] else "") for v in metrics["verdicts"].values()]
    if metrics.get("reference_warning"):
        lines += ["", f"> **{metrics['reference_warning']['text']}**"]
    lines += ["", f"Memorisation check: {metrics['memorisation_status']}", "",
              f"Feature extractor: {metrics['feature_extractor']}"]
    for key, level in metrics["levels"].items():
        c2st = level["c2st"]
        lines += ["", f"**{level.get('label', key)}** — {level['n_real']} real and {level['n_synthetic']} synthetic "
                      "tiles", "", "| measure | unit | real vs synthetic | real vs real | status |", "|---|---|---|---|---|",
                  f"| classifier two-sample test (C2ST) | AUC, 0.5 = indistinguishable | {c2st['auc']:.2f} "
                  f"[{c2st['low']:.2f}, {c2st['high']:.2f}] | – | "
                  f"{'tells them apart' if c2st['low'] > 0.5 else 'cannot tell them apart'} |"]
        for name in ("frechet_distance", "mmd"):
            m = level["features"][name]
            lines.append(f"| {human_name(name)} | feature units | {m['value']:.4g} | {m['real_vs_real']['value']:.4g} | "
                         f"{'differs' if m['beyond_reference'] else 'within the reference'} |")
        mac = level["stain_vectors"]
        if mac.get("available"):
            for stain in ("hematoxylin", "eosin"):
                m = mac[f"{stain}_angle_deg"]
                lines.append(f"| Macenko {stain} vector angle | degrees | {m['value']:.1f} | "
                             f"{m['real_vs_real']['value']:.1f} | "
                             f"{'differs' if m['beyond_reference'] else 'within the reference'} |")
        for name, s in level["statistics"].items():
            lines.append(f"| {human_name(name)}: synthetic / real median ({s['unit']}) | ratio | {s['ratio']['value']:.2f} "
                         f"| {s['real_vs_real_ratio']['value']:.2f} | {s.get('status', '')} |")
    return "\n".join(lines)


# --- the interactive viewer (jupyter-islide) and its GeoJSON overlays ------------------------------------------------
def _line(x0: float, y0: float, x1: float, y1: float, label: str, color: str, fid: str) -> dict[str, Any]:
    """A GeoJSON line in level-0 px (no label drawn when ``label`` is "")."""
    props = {"label": label, "color": color} if label else {"color": color}
    return {"type": "Feature", "id": fid, "geometry": {"type": "LineString", "coordinates": [[x0, y0], [x1, y1]]},
            "properties": props}


def window_grid_geojson(path: str | Path) -> dict[str, Any]:
    """The generated-window grid of a Z-WSI slide (from its provenance's plan) as GeoJSON lines in level-0 px;
    no features for a slide without a plan."""
    import slide_io
    from validation.pipeline import generation_window

    features: list[dict[str, Any]] = []
    with slide_io.open_slide(path) as slide:
        grid = generation_window(slide)
        w0, h0 = slide.dimensions
    if grid is not None:
        side = grid[0]
        features += [_line(x, 0, x, h0, "", "#1e90ff", f"gx{x}") for x in range(side, w0, side)]
        features += [_line(0, y, w0, y, "", "#1e90ff", f"gy{y}") for y in range(side, h0, side)]
    return {"type": "FeatureCollection", "features": features}


def seam_geojson(path: str | Path, window: int | None = None, *, seed: int = 0) -> dict[str, Any]:
    """The flagged seams of a slide (`validation.slide_checks.slide_seam_report` at full resolution, on its
    generated-window grid or ``window`` px) as red GeoJSON lines in level-0 px, labelled with their ratio."""
    import slide_io
    from validation.pipeline import generation_window
    from validation.slide_checks import slide_seam_report

    with slide_io.open_slide(path) as slide:
        grid = generation_window(slide)
        side = window or (grid[0] if grid else 1024)
        report = slide_seam_report(slide, slide.mpp.x, side, seed=seed)
    features = []
    for i, seam in enumerate(report.flagged):
        if seam.axis == "x":
            f = _line(seam.position, seam.start, seam.position, seam.end, f"seam ×{seam.ratio:.1f}", "#ff0000", f"s{i}")
        else:
            f = _line(seam.start, seam.position, seam.end, seam.position, f"seam ×{seam.ratio:.1f}", "#ff0000", f"s{i}")
        features.append(f)
    return {"type": "FeatureCollection", "features": features}


def side_by_side_viewers(real: str | Path, synthetic: str | Path, *, height: int = 480,
                         overlays: Sequence[dict[str, Any]] = ()) -> Any:
    """Two pan-and-zoom whole-slide viewers (jupyter-islide `SlideViewer`, OpenSlide-backed) in one row, real on
    the left, synthetic on the right with ``overlays`` (GeoJSON FeatureCollections in level-0 px) drawn on it.

    Returns:
        An ipywidgets ``VBox``: titles above an ``HBox`` of the two viewers (``.viewers`` holds them).
    """
    import ipywidgets as widgets
    from islide import SlideViewer

    viewers = [SlideViewer(str(real), canvas_h=height), SlideViewer(str(synthetic), canvas_h=height)]
    features = [f for doc in overlays for f in doc["features"]]
    if features:
        viewers[1].set_annotations({"type": "FeatureCollection", "features": features})
    columns = []
    for title, viewer in zip((f"real: {Path(real).name}", f"synthetic: {Path(synthetic).name}"), viewers):
        viewer.layout = widgets.Layout(width="100%")
        columns.append(widgets.VBox([widgets.HTML(f"<b>{title}</b>"), viewer], layout=widgets.Layout(width="50%")))
    box = widgets.VBox([widgets.HBox(columns, layout=widgets.Layout(width="100%"))])
    box.viewers = viewers
    return box
