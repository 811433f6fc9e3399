"""`zwsi train`: fine-tune the S3-DiT from a YAML config; `zwsi train merge-lora`: bake an adapter into a checkpoint.

    zwsi train --config configs/train/tiny-cpu.yaml --dataset DATASET [--max-steps N] [--out DIR] [--resume DIR]
    accelerate launch --config_file configs/accelerate/ddp-multi-gpu.yaml -m zwsi train --config ...
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m zwsi train --config ...   # several CPU processes (gloo)
    zwsi train merge-lora --base Z-Image-Turbo --adapter runs/x/final/adapter --out merged/transformer
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `zwsi train` and `zwsi train merge-lora`."""
    p = subparsers.add_parser(
        "train", help="fine-tune the S3-DiT on a prepared dataset (full, LoRA or frozen groups)",
        description="Train from a YAML config (configs/train/*.yaml). Launch with `accelerate launch ... -m zwsi "
        "train` for several processes. Subcommand `merge-lora` merges an adapter into a full checkpoint.",
    )
    p.add_argument("--config", type=Path, help="training config YAML")
    p.add_argument("--dataset", type=Path, default=None, help="prepared dataset folder (overrides data.dataset)")
    p.add_argument("--out", type=Path, default=None, help="run folder (overrides `out`)")
    p.add_argument("--max-steps", type=int, default=None, help="override budget.max_steps")
    p.add_argument("--resume", type=Path, default=None, help="a checkpoint folder, or a run folder (newest checkpoint)")
    p.set_defaults(func=run_train)
    sub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND")
    m = sub.add_parser("merge-lora", help="merge a LoRA adapter into its base and save the full transformer")
    m.add_argument("--base", required=True, help="base checkpoint (hub folder, transformer/ folder or .safetensors)")
    m.add_argument("--adapter", required=True, type=Path, help="adapter folder (adapter_model.safetensors + config)")
    m.add_argument("--out", required=True, type=Path, help="output transformer folder")
    m.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="dtype of the merge and the output")
    m.set_defaults(func=run_merge)


def run_train(args: argparse.Namespace) -> int:
    import logging

    from zwsi.train.config import load_train_config
    from zwsi.train.trainer import NonFiniteLossError, Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.config is None:
        print("zwsi train: --config is required (e.g. configs/train/tiny-cpu.yaml)", file=sys.stderr)
        return 2
    try:
        overrides = {"budget": {"max_steps": args.max_steps}} if args.max_steps is not None else None
        config = load_train_config(args.config, overrides)
        result = Trainer(config, out=args.out, dataset=args.dataset, resume=args.resume).fit()
    except (ValueError, FileNotFoundError) as exc:
        print(f"zwsi train: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"zwsi train: stopped: {exc}", file=sys.stderr)
        return 3
    import math

    finite = [x for x in result.losses if math.isfinite(x)]
    print(f"zwsi train: {result.steps} steps, {result.tokens:,} tokens, skipped {result.skipped}, last loss "
          f"{finite[-1] if finite else float('nan'):.4f}; run folder {result.out}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from zwsi.train.control import merge_lora

    try:
        out = merge_lora(args.base, args.adapter, args.out, dtype=args.dtype)
    except (ValueError, FileNotFoundError) as exc:
        print(f"zwsi train merge-lora: {exc}", file=sys.stderr)
        return 2
    print(f"zwsi train merge-lora: wrote {out}")
    return 0
