"""Self-contained HTML report of a validation run: every image is an embedded base64 PNG, no external files."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from validation.morphology import STATISTICS
from validation.scalebar import with_scale_bar
from validation.summary import GLOSSARY
from validation.verdict import HUMAN_NAMES, level_label

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.flag{background:#fde2e2}.ok{color:#286a2d}
.pair{display:inline-block;margin:6px;text-align:center;font-size:.8em}.side{display:flex;gap:16px;flex-wrap:wrap}
.side figure{margin:0}figcaption{font-size:.85em;color:#555;text-align:center}.muted{color:#666;font-size:.9em}
ul.findings li{margin:4px 0}.na{color:#666;font-style:italic}
.verdict{font-size:1.1em;margin:6px 0;padding:8px 12px;border-left:6px solid #999;background:#f7f7f7}
.v-bad{border-color:#c0392b}.v-warn{border-color:#e67e22}.v-ok{border-color:#27ae60}
.warning{background:#fff3cd;border:2px solid #e0a800;padding:10px 14px;font-weight:600;margin:12px 0}
dl.glossary dt{font-weight:600;margin-top:6px}dl.glossary dd{margin-left:16px}
td.text{text-align:left;white-space:pre-wrap;max-width:760px}
"""
VERDICT_CLASS = {"copies training data": "v-bad", "not realistic": "v-bad", "distinguishable from real": "v-warn",
                 "similar, with differences": "v-warn", "no difference detected": "v-ok"}


def png_data_uri(image: NDArray[np.uint8] | Image.Image, max_side: int | None = None) -> str:
    """An image as a `data:image/png;base64,...` URI (downscaled to `max_side` when given)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img_tag(image: NDArray[np.uint8] | Image.Image, alt: str, max_side: int | None = None, width: int | None = None
            ) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img src="{png_data_uri(image, max_side)}" alt="{html.escape(alt)}"{w}>'


def figure_uri(fig: Any) -> str:
    """A matplotlib figure as a PNG data URI (figures are built with `matplotlib.figure.Figure`, no pyplot state)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def montage(tiles: NDArray[np.uint8], columns: int = 4, count: int = 8, side: int = 128, mpp: float | None = None
            ) -> NDArray[np.uint8]:
    """A grid of the first `count` tiles, each resized to `side` px, 2 px white gutters; with ``mpp`` (the tiles'
    µm/px) each tile gets a scale bar and the first one the magnification."""
    from validation.scalebar import draw_scale_bar

    picked = tiles[:count]
    rows = max(1, -(-len(picked) // columns))
    out = np.full((rows * (side + 2), columns * (side + 2), 3), 255, np.uint8)
    for i, tile in enumerate(picked):
        small = np.asarray(Image.fromarray(tile).resize((side, side), Image.Resampling.LANCZOS))
        if mpp is not None:
            small = draw_scale_bar(small, mpp * tile.shape[1] / side, caption=None if i == 0 else "")[0]
        r, c = divmod(i, columns)
        out[r * (side + 2):r * (side + 2) + side, c * (side + 2):c * (side + 2) + side] = small
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def _iv(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return f"{_fmt(d['value'])} <span class='muted'>[{_fmt(d['low'])}, {_fmt(d['high'])}]</span>"


def _metric_table(level: dict[str, Any]) -> str:
    rows = []
    for name, label in (("frechet_distance", "Fréchet distance (features)"), ("mmd", "MMD² linear (features)")):
        m = level["features"][name]
        cls = " class='flag'" if m["beyond_reference"] else ""
        rows.append(f"<tr{cls}><td>{label}</td><td>{_iv(m)} <span class='muted'>p = {m['p_value']:.3g}</span></td>"
                    f"<td>{_iv(m['real_vs_real'])}</td><td>{_fmt(m['matched'])}</td></tr>")
    d = level["diversity"]
    cls = " class='flag'" if d["less_diverse_than_real"] else ""
    rows.append(f"<tr{cls}><td>MS-SSIM among tile pairs (synthetic | real)</td><td>{_iv(d['synthetic'])}</td>"
                f"<td>{_iv(d['real'])}</td><td>–</td></tr>")
    mac = level["stain_vectors"]
    if not mac.get("available"):
        rows.append(f"<tr><td>Macenko stain vector angles (°)</td><td colspan='3' class='na'>not applicable: "
                    f"{html.escape(str(mac.get('reason', '')))}</td></tr>")
    else:
        for stain in ("hematoxylin", "eosin"):
            m = mac[f"{stain}_angle_deg"]
            cls = " class='flag'" if m["beyond_reference"] else ""
            rows.append(f"<tr{cls}><td>Macenko {stain} vector angle (°)</td><td>{_iv(m)}</td>"
                        f"<td>{_iv(m['real_vs_real'])}</td><td>–</td></tr>")
    if "paired" in level:
        p = level["paired"]
        rows.append(f"<tr><td>SSIM, paired tiles</td><td>{_iv(p['ssim'])}</td><td>1 (identical)</td><td>–</td></tr>")
        rows.append(f"<tr><td>PSNR dB, paired tiles (cap {p['psnr_cap_db']:.0f})</td><td>{_iv(p['psnr_db'])}</td>"
                    f"<td>∞ (identical)</td><td>–</td></tr>")
    c2st = level.get("c2st")
    if c2st:
        cls = " class='flag'" if c2st["low"] > 0.5 else ""
        rows.insert(0, f"<tr{cls}><td>C2ST AUC (0.5 = indistinguishable, 1 = always told apart)</td><td>"
                       f"{_fmt(c2st['auc'])} <span class='muted'>[{_fmt(c2st['low'])}, {_fmt(c2st['high'])}]</span>"
                       "</td><td>– (0.5 by construction)</td><td>–</td></tr>")
    head = ("<tr><th>metric</th><th>real vs synthetic [95% CI], permutation p</th><th>real vs real (disjoint halves)</th>"
            "<th>size-matched</th></tr>")
    stats = ["<tr><th>statistic</th><th>real median</th><th>synthetic median</th><th>synthetic / real [95% CI]</th>"
             "<th>real half / real half</th></tr>"]
    for name in STATISTICS:
        s = level["statistics"][name]
        label = f"{HUMAN_NAMES.get(name, name)} ({html.escape(s['unit'])})"
        if not s.get("applicable", True):
            stats.append(f"<tr><td>{label}</td><td colspan='4' class='na'>{html.escape(s['status'])}</td></tr>")
            continue
        cls = " class='flag'" if s["beyond_reference"] else ""
        stats.append(f"<tr{cls}><td>{label}</td><td>{_fmt(s['real_median'])}"
                     f"</td><td>{_fmt(s['synthetic_median'])}</td><td>{_iv(s['ratio'])}</td>"
                     f"<td>{_iv(s['real_vs_real_ratio'])}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table><table>{''.join(stats)}</table>"


def _plots(result: Any, key: str) -> str:
    from matplotlib.figure import Figure

    px = result.hed_pixels[key]
    stats = result.statistics[key]
    fig = Figure(figsize=(16, 3.2))
    axes = fig.subplots(1, 4)
    for ax, ch, label in ((axes[0], 0, "hematoxylin"), (axes[1], 1, "eosin")):
        both = np.concatenate([px["real"][:, ch], px["synthetic"][:, ch]])
        span = (float(np.percentile(both, 0.5)), float(np.percentile(both, 99.5))) if len(both) else (0.0, 1.0)
        for role, color in (("real", "tab:blue"), ("synthetic", "tab:orange")):
            if len(px[role]):
                ax.hist(px[role][:, ch], bins=60, range=span, density=True, histtype="step", color=color, label=role)
        ax.set_title(f"{label} (rgb2hed), tissue pixels")
        ax.legend()
    for ax, name in ((axes[2], "nuclei_density"), (axes[3], "sharpness")):
        ax.boxplot([stats["real"][name], stats["synthetic"][name]], tick_labels=["real", "synthetic"])
        ax.set_title(name.replace("_", " ") + " per tile")
    fig.tight_layout()
    parts = [f'<img src="{figure_uri(fig)}" alt="distributions {html.escape(key)}" width="1100">']
    mem = result.memorisation.get(key)
    if mem is not None:
        fig = Figure(figsize=(6, 3))
        ax = fig.subplots()
        bins = np.linspace(0, max(mem.heldout_distance.max(), mem.generated_distance.max()) * 1.05 + 1e-6, 30)
        ax.hist(mem.heldout_distance, bins=bins.tolist(), alpha=0.6, label="held-out real → training")
        ax.hist(mem.generated_distance, bins=bins.tolist(), alpha=0.6, label="synthetic → training")
        ax.axvline(mem.threshold, color="red", ls="--", label="near-copy threshold")
        ax.set_xlabel("nearest-neighbour distance (normalised features)")
        ax.legend(fontsize=8)
        parts.append(f'<img src="{figure_uri(fig)}" alt="memorisation distances" width="560">')
    return "".join(parts)


def _flagged_pairs(result: Any, key: str) -> str:
    mem = result.memorisation.get(key)
    if mem is None:
        return ""
    if not mem.flagged:
        return "<p class='ok'>No synthetic tile is closer to a training tile than the near-copy threshold " \
               f"({mem.threshold:.4g}).</p>"
    synth = result.synthetic.levels[key]
    train = result.training.levels[key]
    cells = []
    for i in mem.flagged[:12]:
        j = int(mem.generated_neighbour[i])
        syn, trn = with_scale_bar(synth.tiles[i], synth.mpp, 160), with_scale_bar(train.tiles[j], train.mpp, 160)
        cells.append(f"<div class='pair'>{img_tag(syn, 'synthetic')} {img_tag(trn, 'training')}"
                     f"<br>synthetic {html.escape(synth.origins[i])}<br>training {html.escape(train.origins[j])}"
                     f"<br>distance {mem.generated_distance[i]:.4g}</div>")
    return f"<h3>Flagged near-copies ({len(mem.flagged)})</h3>" + "".join(cells)


def draw_flagged_seams(thumb: Image.Image, seams: dict[str, Any], thumb_mpp: float) -> tuple[Image.Image, int]:
    """The thumbnail with every flagged window-border segment of ``seams`` (a slide's ``metrics.json`` seam entries,
    positions in px at each entry's µm/px) drawn as a red line; also how many were drawn."""
    from PIL import ImageDraw

    out = thumb.convert("RGB")
    draw = ImageDraw.Draw(out)
    drawn = 0
    for seam in seams.values():
        if "mpp" not in seam:
            continue
        scale = seam["mpp"] / thumb_mpp  # level px -> thumbnail px
        for s in seam["flagged"]:
            p, a, b = s["position"] * scale, s["start"] * scale, s["end"] * scale
            line = [(p, a), (p, b)] if s["axis"] == "x" else [(a, p), (b, p)]
            draw.line(line, fill=(230, 0, 0), width=2)
            drawn += 1
    return out, drawn


def _thumbnails(result: Any) -> str:
    import slide_io

    checks = {role: {s["path"]: s for s in slides} for role, slides in result.metrics.get("slides", {}).items()}
    figs = []
    for role, ts in (("real", result.real), ("synthetic", result.synthetic)):
        if ts.slides:
            with slide_io.open_slide(ts.slides[0]) as slide:
                thumb = slide.get_thumbnail((480, 480))
                mpp = slide.mpp.x * slide.dimensions[0] / thumb.size[0]
            note = ""
            seams = checks.get(role, {}).get(str(ts.slides[0]), {}).get("seams", {})
            if seams:
                thumb, drawn = draw_flagged_seams(thumb, seams, mpp)
                note = f"; {drawn} flagged window borders in red" if drawn else "; no flagged window borders"
            figs.append(f"<figure>{img_tag(with_scale_bar(thumb, mpp), role)}<figcaption>{role}: "
                        f"{html.escape(ts.slides[0].name)} (whole slide{note})</figcaption></figure>")
        else:
            key, first = next(iter(ts.levels.items()))
            figs.append(f"<figure>{img_tag(montage(first.tiles, mpp=first.mpp), role)}<figcaption>{role}: first "
                        f"tiles, {html.escape(level_label(first.mpp, key))}</figcaption></figure>")
    return f"<div class='side'>{''.join(figs)}</div>"


def _zooms(result: Any) -> str:
    """The same place at up to three magnifications, real above synthetic."""
    import slide_io

    keys = [k for k in result.real.levels if k in result.synthetic.levels][:3]
    if result.real.slides and result.synthetic.slides:
        finest = result.real.levels[keys[0]]
        x, y = finest.locations[0] if finest.locations else (0, 0)
        rows = []
        for role, ts in (("real", result.real), ("synthetic", result.synthetic)):
            cells = []
            with slide_io.open_slide(ts.slides[0]) as slide:
                base = slide.mpp.x
                for key in keys:
                    mpp = result.real.levels[key].mpp
                    side = 256
                    half0 = side * mpp / base / 2
                    cx, cy = x + finest.tiles.shape[2] * finest.mpp / base / 2, y + finest.tiles.shape[1] * finest.mpp / base / 2
                    crop = slide.read_region_mpp((round(cx - half0), round(cy - half0)), mpp, (side, side))
                    cells.append(f"<figure>{img_tag(with_scale_bar(crop, mpp), key)}<figcaption>{role}, "
                                 f"{html.escape(level_label(mpp, key))}</figcaption></figure>")
            rows.append(f"<div class='side'>{''.join(cells)}</div>")
        return "".join(rows)
    rows = []
    for role, ts in (("real", result.real), ("synthetic", result.synthetic)):
        cells = [f"<figure>{img_tag(with_scale_bar(ts.levels[k].tiles[0], ts.levels[k].mpp, 256), k)}<figcaption>"
                 f"{role}, {html.escape(level_label(ts.levels[k].mpp, k))}</figcaption></figure>"
                 for k in keys if k in ts.levels]
        rows.append(f"<div class='side'>{''.join(cells)}</div>")
    return "".join(rows)


def _slides_section(metrics: dict[str, Any]) -> str:
    rows = []
    for role, slides in metrics["slides"].items():
        for s in slides:
            for key, seam in s["seams"].items():
                worst = seam["flagged"][0] if seam["flagged"] else None
                where = (f"{worst['axis']}={worst['position']} px [{worst['start']}, {worst['end']}) "
                         f"ratio {worst['ratio']:.2f}") if worst else "–"
                cls = " class='flag'" if seam["flagged"] else ""
                rows.append(f"<tr{cls}><td>{role}: {html.escape(s['name'])}</td><td>{html.escape(key)}</td>"
                            f"<td>{seam['score']:.3f}</td><td>{len(seam['flagged'])} / {seam['n_segments']}</td>"
                            f"<td>{where}</td></tr>")
    seams = ("<table><tr><th>slide</th><th>level</th><th>seam score (border / inside energy)</th>"
             "<th>flagged segments</th><th>worst</th></tr>" + "".join(rows) + "</table>") if rows else \
        "<p class='muted'>No slide large enough for a window-border check.</p>"
    cons = []
    for role, slides in metrics["slides"].items():
        for s in slides:
            for lc in s["level_consistency"]:
                cons.append(f"<tr><td>{role}: {html.escape(s['name'])}</td><td>{lc['fine']} → {lc['fine'] + 1} "
                            f"(×{lc['factor']})</td><td>{lc['psnr']:.2f}</td><td>{lc['ssim']:.4f}</td></tr>")
    cons_html = ("<table><tr><th>slide</th><th>levels</th><th>PSNR dB</th><th>SSIM</th></tr>" + "".join(cons) +
                 "</table>") if cons else "<p class='muted'>No slide with more than one pyramid level.</p>"
    return f"<h3>Seams on the window grid</h3>{seams}<h3>Cross-magnification consistency</h3>{cons_html}"


def _verdicts(m: dict[str, Any]) -> str:
    rows = []
    for v in m.get("verdicts", {}).values():
        caveats = (f" <span class='muted'>({html.escape('; '.join(v['caveats']))})</span>" if v["caveats"] else "")
        rows.append(f"<p class='verdict {VERDICT_CLASS.get(v['verdict'], '')}'><b>{html.escape(v['label'])}: "
                    f"{html.escape(v['verdict'])}</b> — {html.escape(v['reason'])}; {html.escape(v['advice'])}"
                    f"{caveats}</p>")
    warning = m.get("reference_warning")
    if warning:
        rows.append(f"<div class='warning'>{html.escape(warning['text'])}</div>")
    rows.append(f"<p>Memorisation check: {html.escape(m.get('memorisation_status', 'not recorded'))}</p>")
    return "".join(rows)


def _conditioning(m: dict[str, Any]) -> str:
    parts = []
    for item in m.get("conditioning", []):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td class='text'>{html.escape(v)}</td></tr>"
                       for k, v in item["rows"])
        parts.append(f"<table><tr><th>synthetic slide</th><th>{html.escape(item['slide'])}</th></tr>{rows}</table>")
    return "".join(parts) or "<p class='muted'>The synthetic inputs are tile images: no provenance recorded.</p>"


def _glossary() -> str:
    return "<dl class='glossary'>" + "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>"
                                             for t, d in GLOSSARY) + "</dl>"


def render_report(result: Any) -> str:
    """The HTML page for a `ValidationResult`: verdicts first, then what was generated, findings, pictures (with
    scale bars), the numbers per magnification, the gigapixel checks and a glossary."""
    m = result.metrics
    found = m["findings"]
    finding_html = ("<ul class='findings'>" + "".join(f"<li>{html.escape(f)}</li>" for f in found) + "</ul>") if found \
        else "<p class='ok'>No check saw a difference beyond the real-vs-real reference.</p>"
    inputs = "".join(f"<tr><td>{role}</td><td>{'<br>'.join(html.escape(p) for p in paths)}</td></tr>"
                     for role, paths in m["inputs"].items())
    levels = []
    for key, level in m["levels"].items():
        label = level_label(level.get("mpp"), key)
        levels.append(f"<h2>{html.escape(label)}</h2><p class='muted'>{level['n_real']} real and "
                      f"{level['n_synthetic']} synthetic tiles of {level['tile_size']} px. Rows in red differ beyond "
                      "the real-vs-real reference.</p>" + _metric_table(level) + _plots(result, key)
                      + _flagged_pairs(result, key))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Z-WSI validation report</title><style>{CSS}</style></head>
<body>
<h1>Z-WSI validation report</h1>
<h2>Verdict</h2>{_verdicts(m)}
<h2>What was generated</h2>{_conditioning(m)}
<h2>Findings</h2>{finding_html}
<h2>Thumbnails</h2>{_thumbnails(result)}
<h2>Zoomed crops</h2>{_zooms(result)}
<h2>Inputs and method</h2>
<table>{inputs}</table>
<p>Feature extractor: <b>{html.escape(m['feature_extractor'])}</b>. Intervals are 95% percentile bootstrap over
tiles ({m['config']['n_resamples']} resamples, seed {m['config']['seed']}); feature distances use the basic
bootstrap, because resampling with repeats inflates them, so their interval estimates the population value and can
lie below the plug-in value. Each real-vs-synthetic figure sits beside the same measure between two disjoint halves
of the real tiles.</p>
{''.join(levels)}
<h2>Gigapixel checks</h2>{_slides_section(m)}
<h2>Glossary</h2>{_glossary()}
</body></html>
"""
