"""Seams and layout of generated slides, with and without overlapping windows, for one or more models.

For every model, overlap setting and seed, the README quickstart slide (examples/report_skin_example.txt, a
`--size-um` square at 0.5 µm/px, default the quickstart's 2,000 µm) is generated and measured on the decoded levels themselves (the work folder's pixel store, at
each level's own µm/px and window grid):

* seam score (border / inside gradient energy over every window border, `validation.seams.seam_report`) and the
  worst border segment's ratio, per level;
* outline ratio: how much more often than chance the outline of non-glass runs along the window grid (16 px block
  means, `validation.seams.outline_grid_ratio`; the real CMU slide ≈ 1.1);
* stripes: the strongest periodic row pattern (`validation.seams.stripe_peak_ratio`) in the level-0 window with
  the most tissue;
* the wall time of generation.

    python benchmarks/seam_ablation.py --model v1=path/to/old-model --model v2=zwsi/default_model \\
        --overlap 0 1 --seeds 0 1 2 3 --out runs/seam-ablation

Prints a table and writes OUT/ablation.json; a rerun into the same OUT measures only what is missing. The real slide's
figures come from `--real` (e.g. the held-out quarter of the bundled slide): its level 0, measured on the window grid of
each model in the table (rows `real@<window px>`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

REPORT = Path("examples/report_skin_example.txt")


def measure(levels: dict[float, np.ndarray], window: int) -> dict[str, object]:
    """Seam, outline and stripe measures of decoded levels (µm/px -> (h, w, 3) uint8), windows of ``window`` px."""
    from validation.seams import glass_blocks, outline_grid_ratio, seam_report, stripe_peak_ratio

    out: dict[str, object] = {"levels": {}}
    for mpp, image in sorted(levels.items()):
        rep = seam_report(image, window)
        worst = max((s.ratio for s in rep.segments), default=float("nan"))
        out["levels"][str(mpp)] = {"seam_score": rep.score, "worst_ratio": worst, "flagged": len(rep.flagged)}
    finest = levels[min(levels)]
    out["outline_ratio"] = outline_grid_ratio(finest, window)
    glass = glass_blocks(finest)  # the level-0 window with the most tissue, for the stripe measure
    k = window // 16
    counts = {(r, c): (~glass[r * k : (r + 1) * k, c * k : (c + 1) * k]).sum()
              for r in range(glass.shape[0] // k) for c in range(glass.shape[1] // k)}
    r, c = max(counts, key=counts.get)
    out["stripe_ratio"] = stripe_peak_ratio(finest[r * window : (r + 1) * window, c * window : (c + 1) * window],
                                            max_period=window // 2)
    return out


def generate(folder: str, overlap: int, seed: int, out: Path, size_um: float
             ) -> tuple[dict[float, np.ndarray], int, float]:
    """Generate the quickstart slide; its decoded levels, window px and seconds."""
    from slide_io import WindowStore
    from zwsi.generate.pipeline import SlideGenerator

    gen = SlideGenerator.from_pretrained(folder, overrides={"overlap_tokens": overlap, "plan_override": True})
    path = out / f"slide-o{overlap}-s{seed}.tiff"
    start = time.perf_counter()
    result = gen.generate(REPORT.read_text(), width_um=size_um, height_um=size_um, mpp=0.5, seed=seed, out=path,
                          keep_work=True, progress=False)
    seconds = time.perf_counter() - start
    store = WindowStore.open(path.parent / f"{path.name}.work" / "pixels.zarr", mode="r")
    levels = {}
    for lv in result.plan.levels:
        h, w = lv.slide_pixels
        levels[lv.mpp] = store.read(lv.index, (0, h), (0, w))
    shutil.rmtree(path.parent / f"{path.name}.work")
    cfg = result.plan.config
    return levels, cfg.window_tokens * cfg.patch_size * cfg.vae_factor, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, help="LABEL=FOLDER (repeatable)")
    p.add_argument("--overlap", type=int, nargs="+", default=[0, 1])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--size-um", type=float, default=2000.0, help="side of the square slide (the quickstart's)")
    p.add_argument("--real", default=None, help="a real slide measured the same way (level 0)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    done = args.out / "ablation.json"
    rows = json.loads(done.read_text()) if done.is_file() else []  # a rerun adds to what was measured
    have = {(r["model"], r["overlap"], r["seed"]) for r in rows}
    for spec in args.model:
        label, folder = spec.split("=", 1)
        for overlap in args.overlap:
            for seed in args.seeds:
                if (label, overlap, seed) in have:
                    continue
                levels, window, seconds = generate(folder, overlap, seed, args.out, args.size_um)
                rows.append({"model": label, "overlap": overlap, "seed": seed, "seconds": seconds, "window": window,
                             **measure(levels, window)})
                (args.out / "ablation.json").write_text(json.dumps(rows, indent=1))
                print(json.dumps(rows[-1]), flush=True)
    # the real slide, measured on the window grid of every model in the table (its level 0)
    windows = sorted({r.get("window", 512) for r in rows if not r["model"].startswith("real")})
    for window in windows if args.real else []:
        label = f"real@{window}"
        if any(r["model"] == label for r in rows):
            continue
        import slide_io

        with slide_io.open_slide(args.real) as slide:
            w, h = slide.dimensions
            image = slide.read_region((0, 0), 0, (w, h), as_array=True)
        rows.append({"model": label, "overlap": None, "seed": None, "seconds": None, "window": window,
                     **measure({0.5: image}, window)})
        (args.out / "ablation.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'model':6} {'overlap':>7} {'seeds':>6} {'level':>6} {'seam score':>11} {'worst ratio':>12} "
          f"{'outline':>8} {'stripes':>8} {'seconds':>8}")
    groups: dict[tuple[str, object], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["overlap"]), []).append(r)
    for (model, overlap), rs in groups.items():
        for level in rs[0]["levels"]:
            score = np.mean([r["levels"][level]["seam_score"] for r in rs])
            worst = np.max([r["levels"][level]["worst_ratio"] for r in rs])
            secs = np.mean([r["seconds"] for r in rs]) if rs[0]["seconds"] is not None else float("nan")
            print(f"{model:6} {str(overlap):>7} {len(rs):>6} {level:>6} {score:>11.3f} {worst:>12.2f} "
                  f"{np.mean([r['outline_ratio'] for r in rs]):>8.2f} {np.mean([r['stripe_ratio'] for r in rs]):>8.1f} "
                  f"{secs:>8.0f}")


if __name__ == "__main__":
    main()
