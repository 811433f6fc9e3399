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
    """A matplotlib figure: thumbnails of both slides, then the same place at three magnifications, real above
    synthetic.

    Args:
        real, synthetic: slide paths.
        mpps: three µm/px (default 1×, 2×, 4× the real slide's).
        centre: level-0 point to zoom on (default: the real slide's tissue centre).
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
    centre = centre or tissue_centre(real)
    rows = [matched_crops(real, centre, mpps, size), matched_crops(synthetic, centre, mpps, size)]
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
    """A Markdown table of `slide_summary` results, one column per slide."""
    keys = ["file", "vendor", "dimensions", "levels", "mpp", "synthetic", "provenance"]
    lines = ["| | " + " | ".join(str(s["file"]) for s in summaries) + " |", "|---" * (len(summaries) + 1) + "|"]
    for k in keys[1:]:
        lines.append(f"| {k} | " + " | ".join(str(s.get(k, "")).replace("|", "/") for s in summaries) + " |")
    return "\n".join(lines)


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Key numbers of a validation run (`run_validation(...).metrics`) as Markdown: findings, then per level the
    feature distances, stain angles and statistic ratios with their real-vs-real references."""
    lines = [f"**Feature extractor:** {metrics['feature_extractor']}", "", "**Findings:**"]
    lines += [f"- {f}" for f in metrics["findings"]] or ["- none beyond the real-vs-real reference"]
    for key, level in metrics["levels"].items():
        lines += ["", f"**{key}** ({level['n_real']} real, {level['n_synthetic']} synthetic tiles)", "",
                  "| measure | real vs synthetic | real vs real |", "|---|---|---|"]
        for name in ("frechet_distance", "mmd"):
            m = level["features"][name]
            lines.append(f"| {name} | {m['value']:.4g} [{m['low']:.4g}, {m['high']:.4g}] | "
                         f"{m['real_vs_real']['value']:.4g} |")
        mac = level["stain_vectors"]
        if mac.get("available"):
            for stain in ("hematoxylin", "eosin"):
                m = mac[f"{stain}_angle_deg"]
                lines.append(f"| Macenko {stain} angle (°) | {m['value']:.2f} | {m['real_vs_real']['value']:.2f} |")
        for name, s in level["statistics"].items():
            lines.append(f"| {name} ratio synthetic/real | {s['ratio']['value']:.3f} | "
                         f"{s['real_vs_real_ratio']['value']:.3f} |")
    return "\n".join(lines)
