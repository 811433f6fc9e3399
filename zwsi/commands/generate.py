"""`zwsi generate` and `zwsi generate-cohort`: synthetic whole-slide images from report text.

    zwsi generate --report report.txt --out slide.svs --width-um 2000 --height-um 1500 --mpp 0.5 --seed 7 \\
        --model /models/Z-Image-Turbo [--steps 8] [--guidance 0] [--format svs|ome-tiff|tiff]
    zwsi generate --report examples/report_skin_example.txt --out demo.tiff --width-um 2000 --height-um 2000 \\
        --mpp 0.5 --seed 0                                               # the built-in default model (CPU)
    zwsi generate --text "Invasive ductal carcinoma, grade 2." --out s.tiff --width-um 400 --height-um 300 \\
        --mpp 2 --seed 1 --model tiny --random-init                      # random weights: tests, benchmarks
    accelerate launch --config_file configs/accelerate/ddp-multi-gpu.yaml -m zwsi generate ...   # several GPUs
    torchrun --nproc_per_node 2 -m zwsi generate ... --device cpu      # several CPU processes (gloo)
    zwsi generate-cohort --reports reports.csv --where stated_grade=3 --per-report 2 --out cohort/ \\
        --width-um 2000 --height-um 1500 --mpp 0.5 --seed 0 --model /models/Z-Image-Turbo

Bad input prints one line naming the value and exits 2. Torch is imported inside the handlers.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `zwsi generate` and `zwsi generate-cohort`."""
    g = subparsers.add_parser(
        "generate", help="generate one synthetic whole-slide image from a report",
        description="Generate a pyramidal synthetic WSI (Aperio SVS by default, or OME-TIFF / generic TIFF; marked "
        "SYNTHETIC, with provenance) from a pathology "
        "report, conditioned on its text verbatim. Resumes an interrupted run of the same job from <out>.work/.",
    )
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--report", type=Path, help="report file (.txt, or .csv/.json/.jsonl with --report-id/--row)")
    src.add_argument("--text", help="the report text itself")
    g.add_argument("--report-id", default=None, help="which report of a multi-report file")
    g.add_argument("--row", type=int, default=None, help="which report of a multi-report file (0-based)")
    g.add_argument("--out", type=Path, required=True,
                   help="output slide: .svs/.tif/.tiff (svs, tiff formats) or .ome.tif/.ome.tiff (ome-tiff)")
    _slide_args(g)
    g.add_argument("--keep-work", action="store_true", help="keep the latent/pixel zarr stores (<out>.work/)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --out (otherwise it is refused)")
    g.set_defaults(func=run_generate)

    c = subparsers.add_parser(
        "generate-cohort", help="generate K slides per selected report, with a manifest",
        description="Generate --per-report slides for every report of a file that matches all --where conditions; "
        "resumable as a whole; writes <out>/manifest.csv (slide, report id, fields, seed, hashes).",
    )
    c.add_argument("--reports", type=Path, required=True, help="report file or folder (txt/csv/json/jsonl)")
    c.add_argument("--where", action="append", default=[], metavar="FIELD=VALUE",
                   help="select reports (repeatable; fields: id, patient_id, site, histologic_type, grade, stage, "
                   "stated_histologic_type, stated_grade, stated_stage, stated_margins)")
    c.add_argument("--per-report", type=int, required=True, help="slides per report (K)")
    c.add_argument("--out", type=Path, required=True, help="output folder")
    _slide_args(c)
    c.set_defaults(func=run_cohort)


def _slide_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width-um", type=float, required=True, help="slide width in µm")
    p.add_argument("--height-um", type=float, required=True, help="slide height in µm")
    p.add_argument("--mpp", type=float, required=True, help="µm per pixel of the full-resolution level (e.g. 0.5)")
    p.add_argument("--seed", type=int, required=True, help="slide seed (cohort: the base seed)")
    p.add_argument("--model", default=None,
                   help="model folder (hub layout); default: the built-in small demonstration model (zwsi-small, "
                   "trained on one CC0 slide); 'tiny' with --random-init for tests")
    p.add_argument("--random-init", action="store_true", help="build --model tiny with random weights (tests only)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 8)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default 0 = off, as Turbo)")
    p.add_argument("--config", type=Path, default=None, help="generation config YAML (configs/generate/*.yaml)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per model call")
    p.add_argument("--phi-policy", choices=("refuse", "redact", "allow"), default=None,
                   help="report text that likely holds PHI: refuse (default), redact, allow")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the process's GPU, else CPU)")
    p.add_argument("--compression", choices=("jpeg", "deflate", "lzw", "zstd", "none"), default=None)
    p.add_argument("--format", choices=("svs", "ome-tiff", "tiff"), default=None,
                   help="container: svs (default: Aperio layout; OpenSlide 3.4.1/4, tiffslide, Bio-Formats see µm/px, "
                   "objective power, thumbnail/label/macro), ome-tiff (Bio-Formats/QuPath OME-XML), tiff (generic)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--max-pixels", type=float, default=None,
                   help="largest slide accepted, in level-0 pixels (default 4e10 = 200,000² px)")
    p.add_argument("--max-window-tokens", type=int, default=None,
                   help="largest target window side in tokens accepted (default 256 = 4096 px)")


def _generator(args: argparse.Namespace) -> Any:
    from zwsi.generate.pipeline import SlideGenerator

    if args.no_progress:  # transformers draws a "Loading weights" bar for the text encoder otherwise
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

    overrides = {"batch_size": args.batch_size, "phi_policy": args.phi_policy, "device": args.device,
                 "compression": args.compression, "format": args.format}
    return SlideGenerator.from_pretrained(args.model, random_init=args.random_init, config=args.config,
                                          overrides=overrides)


def _request(args: argparse.Namespace) -> Any:
    """The `SlideRequest` of the slide flags (`zwsi generate`; the base seed for `zwsi generate-cohort`)."""
    from zwsi.generate.job import SlideRequest

    return SlideRequest(args.width_um, args.height_um, args.mpp, args.seed, args.steps, args.guidance)


def _fail(command: str, exc: BaseException) -> int:
    line = " ".join(f"{type(exc).__name__}: {exc}".split())  # one line, even for a YAML parser's context lines
    print(f"zwsi {command}: {line}", file=sys.stderr)
    return 2


def _preflight(gen: Any, report: Any, request: Any, out: Path) -> None:
    """The cheap checks `generate_request` makes, made before the job's estimate is printed, so that a refused job
    prints one line: the name against the config's format, steps and guidance, the PHI screen, a writable folder."""
    import tempfile

    from zwsi.generate.job import check_output

    check_output(out, gen.config.format)
    request.resolved(gen.config)
    gen.conditioning(report)
    with tempfile.TemporaryFile(dir=out.parent, prefix=".zwsi-probe-"):  # OSError: read-only, no permission, ...
        pass


def run_generate(args: argparse.Namespace) -> int:
    import logging

    from reports import PhiFoundError, load_report
    from slide_io import SlideError
    from zwsi.generate.job import check_output
    from zwsi.generate.limits import check_disk, check_geometry, check_request_size, estimate_job

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_request_size(args.width_um, args.height_um, args.mpp, args.max_pixels)  # before the model loads
        if args.format is not None:  # the name must fit the container; checked again with the config's format
            check_output(args.out, args.format)
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it, or choose another name")
        if not args.out.parent.is_dir():
            raise FileNotFoundError(f"--out {args.out}: the folder {args.out.parent} does not exist")
        if args.text is not None:
            if args.report_id is not None or args.row is not None:
                raise ValueError("--report-id/--row select from a --report file; they do not apply to --text")
            report: Any = args.text
        else:
            report = load_report(args.report, row=args.row, report_id=args.report_id)
        request = _request(args)
        gen = _generator(args)
        check_geometry(gen.config.plan.window_tokens, args.max_window_tokens)
        _preflight(gen, report, request, args.out)
        estimate = estimate_job(gen.plan(args.width_um, args.height_um, args.mpp, args.seed), gen.config.compression)
        check_disk(estimate, args.out.parent)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"zwsi generate: {estimate.describe()}", file=sys.stderr)
        result = gen.generate_request(report, request, args.out, keep_work=args.keep_work,
                                      progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError, PhiFoundError, SlideError) as exc:
        return _fail("generate", exc)
    if int(os.environ.get("RANK", "0")) == 0:
        here = " here" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        levels = ", ".join(f"{lv.mpp:g} µm/px: {result.model_windows.get(lv.index, 0)} generated{here} + "
                           f"{result.background_windows.get(lv.index, 0)} background"
                           for lv in reversed(result.plan.levels))
        print(f"zwsi generate: wrote {result.path} ({result.plan.levels[0].slide_pixels[1]} x "
              f"{result.plan.levels[0].slide_pixels[0]} px at {args.mpp:g} µm/px, SYNTHETIC) in "
              f"{result.seconds:.1f} s; windows {levels}; report {result.provenance.report_sha256[:12]}, "
              f"seed {args.seed}, model {result.provenance.model_sha256[:12]}")
    return 0


def run_cohort(args: argparse.Namespace) -> int:
    import logging

    from reports import PhiFoundError, load_reports
    from slide_io import SlideError
    from zwsi.generate.cohort import generate_cohort, parse_where

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from zwsi.generate.limits import check_request_size

    try:
        check_request_size(args.width_um, args.height_um, args.mpp, args.max_pixels)
        where = parse_where(args.where)
        records = load_reports(args.reports)
        request = _request(args)
        manifest = generate_cohort(_generator(args), records, args.out, per_report=args.per_report, request=request,
                                   where=where, progress=not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError, PhiFoundError, SlideError) as exc:
        return _fail("generate-cohort", exc)
    print(f"zwsi generate-cohort: manifest {manifest}")
    return 0
