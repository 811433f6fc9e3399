"""`zwsi validate`: fidelity metrics of synthetic slides or tiles against real ones, as metrics.json + report.html."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "validate", help="compare synthetic with real slides/tiles: metrics.json and an HTML report",
        description="Compare synthetic slides or tiles with real ones per magnification level: feature distances "
                    "(Fréchet, MMD), MS-SSIM diversity, stain and nuclei statistics, seams, level consistency, "
                    "memorisation. Inputs are slides, folders of tile images, image files or .txt lists of them.")
    p.add_argument("--real", nargs="+", required=True, metavar="PATH", help="held-out real slides or tiles")
    p.add_argument("--synthetic", nargs="+", required=True, metavar="PATH", help="generated slides or tiles")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for metrics.json and report.html")
    p.add_argument("--training", nargs="+", metavar="PATH", help="training slides or tiles (memorisation check)")
    p.add_argument("--features", default="efficientnet_lite0", metavar="NAME",
                   help="feature extractor: efficientnet_lite0 (default, offline), uni, virchow, virchow2, conch, "
                        "phikon, timm:<architecture> or local-dir:<folder>")
    p.add_argument("--features-weights", metavar="PATH", help="weights file or folder for --features")
    p.add_argument("--features-allow-pickle", action="store_true",
                   help="read a trusted .bin/.pth weights file with torch.load(weights_only=True); refused otherwise")
    p.add_argument("--mpp", nargs="+", type=float, metavar="UM_PER_PX",
                   help="magnification levels in µm/px (default: 1×, 2×, 4× the real slide's)")
    p.add_argument("--tile-size", type=int, default=224, help="tile side in px (default 224, at least 161)")
    p.add_argument("--max-tiles", type=int, default=64, help="most tiles per level and input role (default 64)")
    p.add_argument("--tile-mpp", type=float, help="µm/px of tile images, when known")
    p.add_argument("--paired", action="store_true",
                   help="synthetic is a reconstruction of real (same size): read the same places, add SSIM/PSNR")
    p.add_argument("--window", type=int, default=None,
                   help="generation window side in px at every µm/px, for seams (default: the synthetic slide's own "
                   "windows, read from its provenance, scaled to each µm/px; 1024 for slides without one)")
    p.add_argument("--resamples", type=int, default=200, help="bootstrap resamples (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-html", action="store_true", help="write metrics.json only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from validation.pipeline import ValidationConfig, run_validation

    config = ValidationConfig(
        features=args.features, features_weights=args.features_weights,
        features_allow_pickle=args.features_allow_pickle, mpps=args.mpp, tile_size=args.tile_size,
        max_tiles=args.max_tiles, tile_mpp=args.tile_mpp, paired=args.paired, window=args.window,
        n_resamples=args.resamples, seed=args.seed)
    result = run_validation(args.real, args.synthetic, args.out, training=args.training, config=config,
                            write_html=not args.no_html)
    print(f"wrote {args.out}/metrics.json, {args.out}/summary.md" + ("" if args.no_html else f" and {args.out}/report.html"))
    for verdict in result.metrics["verdicts"].values():
        print(verdict["text"])
    if result.metrics["reference_warning"]:
        print(result.metrics["reference_warning"]["text"])
    print(f"memorisation check: {result.metrics['memorisation_status']}")
    print(f"feature extractor: {result.metrics['feature_extractor']}")
    for line in result.metrics["findings"] or ["no difference beyond the real-vs-real reference"]:
        print(f"- {line}")
    return 0
