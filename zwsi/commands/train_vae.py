"""`zwsi train-vae`: train the small VAE on real slide crops; `zwsi train-vae eval`: measure a VAE on images.

    zwsi train-vae --config configs/vae/small.yaml --out runs/vae-small [--max-steps N] [--slide SVS]
    zwsi train-vae --resume runs/vae-small            # continue the run (its config is in its checkpoints)
    zwsi train-vae eval zwsi/default_model/vae ../shared/data/tiles/mopadi IMAGE.png ... [--downsample 1 4] [--tile 8]

Training is the training core's (`zwsi.train.core`, as `zwsi train`): checkpoints (safetensors + JSON) under
OUT/checkpoints/step-NNNNNNN, metrics in OUT/metrics.jsonl, `--resume DIR` (a run or checkpoint folder; a bare
`--resume` continues --out), and the export OUT/vae (config.json with the measured scaling/shift +
diffusion_pytorch_model.safetensors) with OUT/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `zwsi train-vae` and `zwsi train-vae eval`."""
    p = subparsers.add_parser(
        "train-vae", help="train the small AutoencoderKL on real slide crops (configs/vae/*.yaml)",
        description="Train a small diffusers AutoencoderKL (spatial factor 8) from a YAML config on crops of a real "
        "slide at several µm/px. Subcommand `eval` measures PSNR/SSIM of a VAE folder on image files.",
    )
    p.add_argument("--config", type=Path, help="VAE training config YAML (e.g. configs/vae/small.yaml)")
    p.add_argument("--out", type=Path, help="run folder (checkpoints/, metrics.jsonl, vae/, metrics.json)")
    p.add_argument("--resume", nargs="?", type=Path, const=True, default=None, metavar="DIR",
                   help="continue a run: DIR is its run folder (newest checkpoint) or a checkpoint folder; without "
                   "DIR, the run in --out. --config may then be left out (the checkpoint's config is used)")
    p.add_argument("--max-steps", type=int, default=None, help="override budget.max_steps")
    p.add_argument("--slide", type=str, default=None, help="override data.slide (the training slide)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for log files)")
    p.add_argument("--init", default=None, help="override model.init (a VAE folder to start from)")
    p.set_defaults(func=run_train_vae)
    sub = p.add_subparsers(dest="train_vae_command", metavar="SUBCOMMAND")
    e = sub.add_parser("eval", help="PSNR/SSIM of a VAE's reconstructions of image files (or folders of them)")
    e.add_argument("vae", type=Path, help="VAE folder (config.json + *.safetensors) or a hub folder with vae/")
    e.add_argument("images", nargs="+", help="image files or folders (png/jpg/tif)")
    e.add_argument("--downsample", type=int, nargs="+", default=[1], help="also shrink images by these factors")
    e.add_argument("--tile", type=int, default=None,
                   help="encode/decode tile by tile, tile side in latents (default: whole image at once)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=run_eval)


def run_train_vae(args: argparse.Namespace) -> int:
    import logging

    from slide_io import SlideError
    from zwsi.train.core import saved_config
    from zwsi.typed_config import merge
    from zwsi.vae.config import load_vae_train_config, vae_train_config_from_dict
    from zwsi.vae.train import NonFiniteLossError, VAETrainer

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    resume = args.resume if args.resume is not True else args.out
    if (args.config is None and resume is None) or (args.out is None and not isinstance(resume, Path)):
        print("zwsi train-vae: --config and --out are required (e.g. --config configs/vae/small.yaml --out runs/vae), "
              "or --resume RUN to continue a run", file=sys.stderr)
        return 2
    overrides: dict[str, dict[str, object]] = {}
    if args.max_steps is not None:
        overrides["budget"] = {"max_steps": args.max_steps}
    if args.slide is not None:
        overrides["data"] = {"slide": args.slide}
    if args.init is not None:
        overrides["model"] = {"init": args.init}
    if args.no_progress:
        overrides["log"] = {"progress": False}
    try:
        if args.config is not None:
            config = load_vae_train_config(args.config, overrides)
        else:
            config = vae_train_config_from_dict(merge(saved_config(resume), overrides), where=f"--resume {resume}")
        result = VAETrainer(config, args.out, resume=resume).fit()
    except (ValueError, FileNotFoundError, SlideError) as exc:
        print(f"zwsi train-vae: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"zwsi train-vae: stopped: {exc}", file=sys.stderr)
        return 3
    m = result.metrics
    held = ", ".join(f"{k} µm/px {v['psnr']:.2f} dB / SSIM {v['ssim']:.3f}" for k, v in m["held_out_cmu"].items())
    print(f"zwsi train-vae: {result.steps} steps in {m['train_seconds']:.0f} s; {m['params']:,} params, "
          f"{m['weights_bytes'] / 1e6:.2f} MB ({m['storage_dtype']}); scaling_factor {m['scaling_factor']}, "
          f"shift_factor {m['shift_factor']}; held-out CMU: {held}; VAE folder {result.export}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from zwsi.vae import VAE
    from zwsi.vae.evaluate import iter_images, reconstruction_metrics

    if any(d < 1 for d in args.downsample):
        print(f"zwsi train-vae eval: --downsample factors must be >= 1, got {args.downsample}", file=sys.stderr)
        return 2
    try:
        vae = VAE.from_folder(args.vae)
        rows = []
        for path, rgb in iter_images(args.images):
            for d in args.downsample:
                try:
                    psnr, ssim = reconstruction_metrics(vae, rgb, downsample=d, tile=args.tile)
                except ValueError as exc:
                    if d == 1:
                        raise
                    print(f"zwsi train-vae eval: skipped {path} at /{d}: {exc}", file=sys.stderr)
                    continue
                rows.append({"image": str(path), "downsample": d, "psnr": psnr, "ssim": ssim})
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"zwsi train-vae eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"vae": str(args.vae), "rows": rows}, indent=2))
        return 0
    print(f"{'image':60s} {'down':>4s} {'PSNR dB':>8s} {'SSIM':>6s}")
    for r in rows:
        print(f"{r['image'][-60:]:60s} {r['downsample']:4d} {r['psnr']:8.2f} {r['ssim']:6.3f}")
    for d in args.downsample:
        sel = [r for r in rows if r["downsample"] == d]
        print(f"{'mean':60s} {d:4d} {np.mean([r['psnr'] for r in sel]):8.2f} {np.mean([r['ssim'] for r in sel]):6.3f}")
    return 0
