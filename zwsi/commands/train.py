"""`zwsi train`: fine-tune the S3-DiT from a YAML config; `zwsi train merge-lora`: bake an adapter into a checkpoint.

    zwsi train --config configs/train/tiny-cpu.yaml --dataset DATASET [--max-steps N] [--out DIR]
    zwsi train --resume RUN [--max-steps N]      # continue a run (or a checkpoint folder): its config, data, folder
    accelerate launch --config_file configs/accelerate/ddp-multi-gpu.yaml -m zwsi train --config ...
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m zwsi train --config ...   # several CPU processes (gloo)
    zwsi train merge-lora --base Z-Image-Turbo --adapter runs/x/final/adapter --out merged/transformer
    zwsi train export --transformer runs/x/final/ema-transformer --vae runs/vae/vae \\
        --generate-config configs/generate/zwsi-small.yaml --out my-model     # a folder `zwsi generate --model` reads
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
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
    p.add_argument("--resume", type=Path, default=None, metavar="DIR",
                   help="continue a run: DIR is its run folder (newest checkpoint) or a checkpoint folder; --config, "
                   "--dataset and --out default to the run's")
    p.set_defaults(func=run_train)
    sub = p.add_subparsers(dest="train_command", metavar="SUBCOMMAND")
    m = sub.add_parser("merge-lora", help="merge a LoRA adapter into its base and save the full transformer")
    m.add_argument("--base", required=True, help="base checkpoint (hub folder, transformer/ folder or .safetensors)")
    m.add_argument("--adapter", required=True, type=Path, help="adapter folder (adapter_model.safetensors + config)")
    m.add_argument("--out", required=True, type=Path, help="output transformer folder")
    m.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="dtype of the merge and the output")
    m.set_defaults(func=run_merge)
    e = sub.add_parser("export", help="bundle a trained transformer, a VAE and a text encoder into a pipeline folder",
                       description="Write the hub layout `zwsi generate --model` reads (transformer/, vae/, "
                       "text_encoder/, scheduler/, zwsi_generate.yaml). The offline MiniLM is referenced, not copied.")
    e.add_argument("--transformer", required=True, type=Path, help="trained transformer folder (e.g. RUN/final/ema-transformer)")
    e.add_argument("--vae", required=True, type=Path, help="VAE folder (e.g. a `zwsi train-vae` run's vae/)")
    e.add_argument("--text-encoder", default="minilm", help="'minilm' (the offline package) or a text encoder folder")
    e.add_argument("--generate-config", type=Path, default=None,
                   help="generation settings YAML (its geometry must agree with the run's training plan)")
    e.add_argument("--run", type=Path, default=None,
                   help="the training run folder holding zwsi_plan.json (default: two folders above --transformer, "
                   "e.g. RUN for RUN/final/ema-transformer)")
    e.add_argument("--shift", type=float, default=None,
                   help="sampling shift for a transformer without a training plan (default 3.0); with a plan, the "
                   "shift it was trained with")
    e.add_argument("--vae-dtype", default="fp16", choices=("fp16", "fp32"), help="storage dtype of the VAE weights")
    e.add_argument("--transformer-dtype", default="fp32", choices=("fp16", "fp32"),
                   help="storage dtype of the transformer weights (they compute in the generation config's dtype)")
    e.add_argument("--out", required=True, type=Path, help="new pipeline folder")
    e.set_defaults(func=run_export)


def run_train(args: argparse.Namespace) -> int:
    import logging

    from zwsi.train.config import from_dict, load_train_config
    from zwsi.train.core import saved_config
    from zwsi.train.trainer import NonFiniteLossError, Trainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.config is None and args.resume is None:
        print("zwsi train: --config is required (e.g. configs/train/tiny-cpu.yaml), or --resume RUN to continue a run",
              file=sys.stderr)
        return 2
    try:
        overrides = {"budget": {"max_steps": args.max_steps}} if args.max_steps is not None else None
        if args.config is not None:
            config = load_train_config(args.config, overrides)
        else:
            config = from_dict(saved_config(args.resume), overrides, where=f"--resume {args.resume}")
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


def run_export(args: argparse.Namespace) -> int:
    from zwsi.dtypes import resolve_dtype
    from zwsi.generate.config import GenerateConfig, load_generate_config
    from zwsi.generate.pipeline import SlideGenerator
    from zwsi.model.checkpoint import load_transformer
    from zwsi.text.encoders import load_text_encoder
    from zwsi.training_plan import TrainingPlan
    from zwsi.vae import VAE

    try:
        run = args.run if args.run is not None else args.transformer.resolve().parent.parent
        plan = TrainingPlan.read(run)
        if args.run is not None and plan is None:
            raise FileNotFoundError(f"--run {run} holds no zwsi_plan.json (written by `zwsi train`)")
        transformer = load_transformer(args.transformer, dtype="fp32", device="cpu").requires_grad_(False)
        vae = VAE.from_folder(args.vae)
        spec = {"backend": "hf"} if args.text_encoder == "minilm" else {"path": args.text_encoder}
        encoder = load_text_encoder(spec)
        config = load_generate_config(args.generate_config) if args.generate_config else GenerateConfig()
        shift, prediction = (3.0 if args.shift is None else args.shift), "velocity"
        if plan is not None:  # the geometry and schedule the model was trained with travel with it
            if args.shift is not None and args.shift != plan.shift:
                raise ValueError(f"--shift {args.shift} disagrees with the shift the model was trained with "
                                 f"({plan.shift}, {run}/zwsi_plan.json)")
            config = config.merged(plan.generate_settings()) if args.generate_config is None else config
            plan.check(config, patch_size=int(transformer.config.patch_size), vae_factor=int(vae.spatial_factor),
                       latent_channels=int(vae.latent_channels))
            shift, prediction = plan.shift, plan.prediction
        else:
            print(f"zwsi train export: warning: {run} has no zwsi_plan.json; the model folder will not record the "
                  f"geometry and schedule it was trained with", file=sys.stderr)
        gen = SlideGenerator(transformer, vae, encoder, config=config, shift=shift, prediction=prediction,
                             name=args.out.name)
        half = {"fp16": resolve_dtype("fp16"), "fp32": None}
        out = gen.save_pretrained(args.out, vae_dtype=half[args.vae_dtype], transformer_dtype=half[args.transformer_dtype])
        if plan is not None:
            plan.write(out)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"zwsi train export: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"zwsi train export: wrote {out} ({size / 1e6:.1f} MB)")
    return 0
