"""Size the built-in model: short training runs of S3-DiT shapes, compared by loss at fixed noise levels on
held-out windows, and the generation cost of each shape.

Each candidate trains with the real trainer (`zwsi.train.trainer.Trainer`, the given config, `model.overrides`
for the shape) for the same number of steps from DiT's initialisation; its final weights are then scored on a second
prepared dataset of windows it never saw (the held-out CMU strip in `configs/default_model/build.sh`) at fixed
sigmas, with the objective's prediction (velocity loss either way, so shapes compare on one scale). The generation
cost is the forward time of a batch of 8 windows shaped as generation builds them (target with its overlap,
strips, overview, report), per window and step, on this machine.

    python benchmarks/model_size_sweep.py --config configs/train/zwsi-small.yaml --dataset runs/default/dataset \\
        --holdout runs/default/dataset-holdout --steps 300 --out runs/sweep --candidates base:128,4,2 wide:256,4,4

Prints a table (and writes OUT/sweep.json); the ratio column is against the first candidate of the run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

SIGMAS = (0.3, 0.6, 0.9)


def shape_overrides(dim: int, layers: int, heads: int) -> dict[str, object]:
    """S3DiTConfig fields of a candidate: RoPE axes split head_dim as Z-Image does (t gets the rest, h = w)."""
    head = dim // heads
    hw = (head * 3 // 8) // 2 * 2
    return {"dim": dim, "n_layers": layers, "n_heads": heads, "n_kv_heads": heads, "axes_dims": [head - 2 * hw, hw, hw]}


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, holdout: Path, config: object, n: int = 16) -> dict[float, float]:
    """Velocity loss of ``model`` on ``n`` fixed held-out windows per sigma (no report/overview drops)."""
    from zwsi.flow import as_velocity, flow_loss
    from zwsi.sampling import sequence_denoiser
    from zwsi.train.dataset import PreparedDataset
    from zwsi.train.samples import WindowSampler

    ds = PreparedDataset(holdout)
    sampler = WindowSampler(ds, "train", config.data, config.objective, seed=123)
    out = {}
    for sigma in SIGMAS:
        ex = [sampler.build(sampler.draw(i, sigma=sigma, drops=False)) for i in range(n)]
        denoise = as_velocity(sequence_denoiser(model, [e.sample for e in ex]), config.objective.prediction)
        out[sigma] = float(flow_loss(denoise, [e.x0 for e in ex], torch.full((n,), sigma), eps=[e.eps for e in ex]))
    return out


@torch.no_grad()
def window_step_ms(model: torch.nn.Module, dataset: Path, config: object) -> float:
    """Forward milliseconds per window and step, for a batch of 8 generation-shaped windows (phase D, overview)."""
    from zwsi.train.dataset import PreparedDataset
    from zwsi.train.samples import WindowSampler

    ds = PreparedDataset(dataset)
    sampler = WindowSampler(ds, "train", config.data, config.objective, seed=7)
    draws = [d for d in (sampler.draw(i, sigma=0.5, drops=False) for i in range(400)) if d.phase == 3 and d.level == 0]
    batch = [sampler.build(d).sample for d in draws[:8]]
    model(batch)
    start = time.perf_counter()
    for _ in range(3):
        model(batch)
    return (time.perf_counter() - start) / 3 / len(batch) * 1000


def main() -> None:
    from zwsi.model.checkpoint import load_transformer
    from zwsi.train.config import load_train_config
    from zwsi.train.trainer import Trainer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--holdout", type=Path, required=True, help="prepared dataset of held-out windows")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--candidates", nargs="+", required=True, help="NAME:DIM,LAYERS,HEADS")
    args = p.parse_args()
    rows = []
    for spec in args.candidates:
        name, dims = spec.split(":")
        dim, layers, heads = (int(v) for v in dims.split(","))
        overrides = {"model": {"overrides": shape_overrides(dim, layers, heads)}, "budget": {"max_steps": args.steps},
                     "checkpoint": {"every": 0}, "validation": {"every": 0},
                     "log": {"every": 10, "progress": False, "tensorboard": False}}
        config = load_train_config(args.config, overrides)
        out = args.out / name
        start = time.perf_counter()
        result = Trainer(config, out=out, dataset=args.dataset).fit()
        seconds = time.perf_counter() - start
        # the raw weights: an EMA over a few hundred steps still leans on the initialisation
        model = load_transformer(out / "final" / "transformer", dtype="fp32").eval()
        losses = held_out_loss(model, args.holdout, config)
        rows.append({"name": name, "dim": dim, "layers": layers, "heads": heads,
                     "params": sum(q.numel() for q in model.parameters()), "steps": result.steps,
                     "s_per_step": seconds / max(result.steps, 1), "held_out": losses,
                     "held_out_mean": float(np.mean(list(losses.values()))),
                     "ms_per_window_step": window_step_ms(model, args.dataset, config),
                     "threads": torch.get_num_threads()})
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps(rows, indent=1))
    base = rows[0]
    print(f"{'name':8} {'shape':>12} {'params':>8} {'s/step':>7} {'gen ms/win-step':>16} "
          + " ".join(f"{'σ=' + str(s):>8}" for s in SIGMAS) + f" {'mean':>7} {'vs ' + base['name']:>9}")
    for r in rows:
        print(f"{r['name']:8} {r['dim']:>4}x{r['layers']}x{r['heads']:<5} {r['params'] / 1e6:>7.2f}M {r['s_per_step']:>7.2f} "
              f"{r['ms_per_window_step']:>16.1f} " + " ".join(f"{r['held_out'][s]:>8.4f}" for s in SIGMAS)
              + f" {r['held_out_mean']:>7.4f} {r['held_out_mean'] / base['held_out_mean']:>9.3f}")


if __name__ == "__main__":
    main()
