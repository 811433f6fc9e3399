"""The built-in model's fidelity table: `zwsi validate` of generated slides against held-out real tissue.

Each synthetic slide is validated (`validation.pipeline.run_validation`) against the real reference at its level-0
µm/px; the table gives, per slide, the figures the model card reports, each with the aim the built-in-model issue
set: nucleus area ratio (0.8–1.25), haematoxylin and eosin OD ratios (0.85–1.15), sharpness (within ±15 %), Macenko
vector angles (≤ 5°), Fréchet distance over its real-vs-real reference (≤ 1.5×), classifier two-sample AUC (≤ 0.85)
and the memorisation check against the training slide.

    python benchmarks/model_card_table.py --real runs/default/slides/holdout/CMU-1-Small-Region.tif \\
        --training runs/default/slides/train/CMU-1-Small-Region-d0.tif --out runs/card \\
        --slide v1/s0=runs/ablation/v1/slide-o0-s0.tiff --slide v2/s0=runs/ablation/v2/slide-o1-s0.tiff

Writes OUT/<label>/metrics.json and report.html (a rerun skips labels already done) and prints the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = ("nucleus area", "H OD", "E OD", "sharpness", "H angle°", "E angle°", "FD / real-real", "C2ST AUC",
           "memorised")


def row(metrics: dict, mpp_key: str) -> list[str]:
    level = metrics["levels"][mpp_key]
    st, mac, fd = level["statistics"], level["stain_vectors"], level["features"]["frechet_distance"]

    def ratio(name: str) -> str:
        return f"{st[name]['ratio']['value']:.2f}"

    angles = [f"{mac[f'{s}_angle_deg']['value']:.1f}" if mac.get("available") else "n/a" for s in ("hematoxylin", "eosin")]
    ref = fd["real_vs_real"]["value"]
    c2st = level.get("c2st")
    mem = level.get("memorisation")
    return [ratio("nucleus_area"), ratio("hematoxylin"), ratio("eosin"), f"{st['sharpness']['ratio']['value'] - 1:+.0%}",
            *angles, f"{fd['value'] / ref:.2f}" if ref > 0 else "n/a",
            f"{c2st['auc']:.2f} [{c2st['low']:.2f}, {c2st['high']:.2f}]" if c2st else "n/a",
            f"{len(mem['flagged'])} of {mem['n_generated']}" if mem else "n/a"]


def main() -> None:
    from validation.pipeline import ValidationConfig, run_validation

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True)
    p.add_argument("--training", default=None)
    p.add_argument("--slide", action="append", required=True, help="LABEL=TIFF (repeatable)")
    p.add_argument("--mpp", type=float, default=0.5, help="the level compared (default 0.5 µm/px, 20x)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    table = []
    for spec in args.slide:
        label, path = spec.split("=", 1)
        out = args.out / label.replace("/", "_")
        if not (out / "metrics.json").is_file():
            config = ValidationConfig(mpps=[args.mpp], seed=0)
            run_validation([args.real], [path], out, training=[args.training] if args.training else None,
                           config=config, progress=False)
        metrics = json.loads((out / "metrics.json").read_text())
        key = next(iter(metrics["levels"]))
        table.append([label, *row(metrics, key)])
    print("| slide | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for r in table:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
