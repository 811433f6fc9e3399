"""What a clinician reads first: the conditioning of the synthetic slide (from its provenance), a glossary of the
metrics, and the Markdown summary (`summary.md`) of a validation run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"

GLOSSARY: tuple[tuple[str, str], ...] = (
    ("verdict", "one line per magnification from the checks below, with thresholds fixed in validation/verdict.py: "
                "C2ST AUC ≥ 0.90 (interval above 0.5) is *not realistic*, ≥ 0.70 *distinguishable from real*; "
                "otherwise *similar, with differences* when any check differs beyond the real-vs-real reference, "
                "else *no difference detected*; near-copies of training tiles make it *copies training data*."),
    ("magnification (20×, 0.5 µm/px)", "µm per pixel is the physical size of one pixel; the objective name is the "
                                        "usual convention 10 / (µm/px): 0.25 µm/px ≈ 40×, 0.5 ≈ 20×, 2 ≈ 5×."),
    ("C2ST AUC", "classifier two-sample test: a logistic regression tries to tell synthetic from real tiles by their "
                 "features; its area under the ROC curve is 0.5 when it cannot (indistinguishable at this sample "
                 "size) and 1.0 when it always can."),
    ("Fréchet distance", "distance between the real and the synthetic tiles' feature distributions (mean and "
                         "covariance; the FID recipe with the chosen feature extractor). 0 = same distribution; it "
                         "has no fixed scale, so read it beside the real-vs-real value."),
    ("MMD² (negative values)", "maximum mean discrepancy, squared, with a linear kernel: the squared distance "
                               "between the feature means, estimated without bias — so when two samples come from "
                               "the same distribution it scatters around 0 and can be slightly negative. Negative "
                               "means no difference, not an error."),
    ("real-vs-real reference", "the same measure between two disjoint halves of the real tiles: how much two real "
                               "samples differ anyway. A difference counts only beyond it."),
    ("95% interval", "bootstrap over tiles: the range the value would likely take on another sample of tiles."),
    ("permutation p", "share of random relabellings of real and synthetic tiles that give a distance at least as "
                      "large; below 0.05 the difference is unlikely to be chance."),
    ("MS-SSIM diversity", "mean multi-scale structural similarity among pairs of tiles of one set: higher than "
                          "real means the synthetic tiles look more alike (less diverse)."),
    ("not applicable", "a check whose premise fails (no tissue, no nuclei found in most tiles) says so instead of "
                       "passing or failing."),
    ("memorisation", "whether synthetic tiles are closer to a training tile than almost any unseen real tile is "
                     "(near-copies); needs real slides the model never saw and the training slides (--training)."),
    ("seam score", "image energy on the generation-window borders over energy inside the windows; about 1 means "
                   "no visible seams."),
)
"""(term, plain explanation) pairs for the report's glossary."""


def _get(mapping: Mapping[str, Any] | None, *keys: str) -> Any:
    value: Any = mapping or {}
    for k in keys:
        value = value.get(k) if isinstance(value, Mapping) else None
    return value


def _or_missing(value: Any) -> str:
    return NOT_RECORDED if value in (None, "", [], {}) else str(value)


def conditioning_rows(provenance: Mapping[str, Any] | None, feature_extractor: str | None = None
                      ) -> list[tuple[str, str]]:
    """(field, value) rows of what made a synthetic slide, read from its provenance (`slide_io.Provenance` as a
    dict); each absent field says "not recorded"."""
    p = provenance or {}
    request = _get(p, "extra", "request") or {}
    size = (f"{request['width_um']:g} × {request['height_um']:g} µm at {request['mpp']:g} µm/px"
            if {"width_um", "height_um", "mpp"} <= set(request) else None)
    model = _get(p, "extra", "model")
    sha = p.get("model_sha256")
    model_text = f"{model or NOT_RECORDED}" + (f" (weights SHA-256 {sha[:16]}…)" if sha else "")
    cond = _get(p, "extra", "conditioning") or {}
    tokens = (f"{cond['n_tokens']} tokens" + (" (truncated)" if cond.get("truncated") else "")
              if "n_tokens" in cond else None)
    return [
        ("report text (conditioning)", _or_missing(cond.get("text"))),
        ("report id", _or_missing(_get(p, "extra", "report_id"))),
        ("report SHA-256", _or_missing(p.get("report_sha256"))),
        ("seed", _or_missing(p.get("seed"))),
        ("model", model_text if (model or sha) else NOT_RECORDED),
        ("text encoder", _or_missing(cond.get("encoder")) + (f", {tokens}" if tokens else "")),
        ("PHI policy", _or_missing(cond.get("phi_policy"))),
        ("size requested", _or_missing(size)),
        ("feature extractor (validation)", _or_missing(feature_extractor)),
        ("software", _or_missing(p.get("software"))),
        ("created", _or_missing(p.get("created"))),
    ]


def read_provenances(paths: Sequence[str | Path]) -> list[dict[str, Any] | None]:
    """Each slide's provenance as a dict (None for files without one or that are not slides)."""
    from dataclasses import asdict

    import slide_io

    out: list[dict[str, Any] | None] = []
    for path in paths:
        try:
            prov = slide_io.read_provenance(path)
        except (slide_io.SlideError, OSError, ValueError):
            prov = None
        out.append(None if prov is None else asdict(prov))
    return out


def _md(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def summary_markdown(metrics: Mapping[str, Any]) -> str:
    """The Markdown summary of a validation run (`summary.md`): verdicts, warning, conditioning, findings, key
    numbers, glossary."""
    lines = ["# Z-WSI validation summary", "", "## Verdict", ""]
    lines += [f"- **{v['label']}: {v['verdict']}** — {v['reason']}; {v['advice']}"
              + (f" ({'; '.join(v['caveats'])})" if v["caveats"] else "") for v in metrics["verdicts"].values()]
    warning = metrics.get("reference_warning")
    if warning:
        lines += ["", f"> **{_md(warning['text'])}**"]
    lines += ["", f"Memorisation check: {metrics['memorisation_status']}", "", "## What was generated", "",
              "| field | value |", "|---|---|"]
    for role_slide in metrics.get("conditioning", []):
        lines.append(f"| synthetic slide | {_md(role_slide['slide'])} |")
        lines += [f"| {k} | {_md(v)} |" for k, v in role_slide["rows"]]
    lines += ["", "## Findings", ""]
    lines += [f"- {f}" for f in metrics["findings"]] or ["- no difference beyond the real-vs-real reference"]
    for key, level in metrics["levels"].items():
        label = metrics["verdicts"][key]["label"]
        c2st = level.get("c2st") or {}
        lines += ["", f"### {label}: {level['n_real']} real, {level['n_synthetic']} synthetic tiles", "",
                  "| measure | real vs synthetic | real vs real | status |", "|---|---|---|---|"]
        if c2st:
            lines.append(f"| C2ST AUC (0.5 = indistinguishable) | {c2st['auc']:.3f} [{c2st['low']:.3f}, "
                         f"{c2st['high']:.3f}] | – | {'separates' if c2st['low'] > 0.5 else 'does not separate'} |")
        for name in ("frechet_distance", "mmd"):
            m = level["features"][name]
            lines.append(f"| {human_name(name)} | {m['value']:.4g} [{m['low']:.4g}, {m['high']:.4g}] | "
                         f"{m['real_vs_real']['value']:.4g} | {'differs' if m['beyond_reference'] else 'within'} |")
        for name, s in level["statistics"].items():
            lines.append(f"| {human_name(name)} ({s['unit']}), synthetic / real median | {s['ratio']['value']:.3f} | "
                         f"{s['real_vs_real_ratio']['value']:.3f} | {_md(s.get('status', ''))} |")
    lines += ["", "## Glossary", ""] + [f"- **{term}**: {text}" for term, text in GLOSSARY]
    return "\n".join(lines) + "\n"


def human_name(name: str) -> str:
    """The human name of a metrics.json key ("nuclei_density" → "nuclei density")."""
    from validation.verdict import HUMAN_NAMES

    return HUMAN_NAMES.get(name, name.replace("_", " "))
