"""Benchmark: slide generation throughput (windows/s, s per megapixel of tissue) and peak RSS vs slide size.

Part 1, throughput: generate one slide and compare the pipeline's wall time with a named baseline measured in the
same run: **model only** = the transformer alone on the same number of window forwards (the same batch size; one
window of each phase A..D, i.e. overview only up to eight neighbour strips + overview, cycled through the batch),
i.e. what the slide would cost with zero pipeline overhead (no planner, store, VAE decode, tissue detection or
TIFF). Ratio = pipeline / model only.

Part 2, memory: each size runs in its own subprocess, which reports its peak RSS (ru_maxrss) and its RSS after
loading the pipeline (the baseline: what generation adds on top of the loaded model). Every size uses the same
window geometry, so the table shows how peak memory grows with the slide.

    .venv/bin/python benchmarks/generate.py --threads 1 --window-tokens 16 --context-tokens 2     # CPU, tiny
    .venv/bin/python benchmarks/generate.py --device cuda --model /models/Z-Image-Turbo \\
        --config configs/generate/z-image-turbo.yaml --size 8192x8192 --rss-sizes --mask-sizes  # H100: 1024² windows
    python benchmarks/generate.py --device cuda --model random:z-image-turbo --size 4096x4096 --rss-sizes \\
        --mask-sizes --json out/results.jsonl      # the GPU kit: random 6B weights, FLUX-shaped VAE, no files

Sizes are WIDTHxHEIGHT in pixels of level 0 (at --mpp). Outputs go to a temporary folder and are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_json import JsonLines

REPORT = ("Invasive ductal carcinoma, Nottingham grade 2 (tubules 3, nuclei 2, mitoses 1). Ductal carcinoma in situ, "
          "cribriform type, comprising 10% of the tumour. Margins negative. Lymphovascular invasion not identified.")


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def load(args: argparse.Namespace) -> Any:
    from zwsi.generate.pipeline import SlideGenerator

    overrides = {"device": args.device, "batch_size": args.batch_size, "window_tokens": args.window_tokens,
                 "context_tokens": args.context_tokens, "vae_tile": args.vae_tile, "compression": args.compression}
    if args.model.startswith("random:"):  # a preset's shapes, random weights, no files (benchmarks/random_pipeline.py)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # its text encoder's tokenizer lives in tests/
        from random_pipeline import random_pipeline

        from zwsi.generate.config import GenerateConfig, load_generate_config

        preset = args.model.split(":", 1)[1]
        config = load_generate_config(args.config, base=GenerateConfig.preset(preset)) if args.config else None
        return random_pipeline(preset, config=config, overrides=overrides)
    return SlideGenerator.from_pretrained(args.model, random_init=args.model == "tiny", config=args.config,
                                          overrides=overrides)


def sync(gen: Any) -> None:
    import torch

    if gen.device.type == "cuda":
        torch.cuda.synchronize()


def model_only_seconds(gen: Any, forwards: int, repeats: int = 3) -> float:
    """Seconds the transformer alone needs for `forwards` window forwards (phase-D samples, the config's batch)."""
    import numpy as np
    import torch

    cfg = gen.config
    side_um = 4 * cfg.plan.window_tokens * gen.plan_config.token_px * 1.0  # 4 x 4 windows at 1 µm/px, a level above
    plan = gen.plan(side_um, side_um, 1.0, seed=0)
    level = plan.level(0)
    canvas = {lv.index: np.zeros((plan.config.latent_channels, *lv.latent_shape), np.float32) for lv in plan.levels}
    features = gen._encode(gen.conditioning(REPORT).text)

    from zwsi.planner import build_sample, window_noise

    # one window of each phase A, B, C, D (their contexts: overview; + 2, 6, 8 neighbour strips), cycled to a batch
    windows = [plan.window(0, 2, 2), plan.window(0, 2, 1), plan.window(0, 1, 2), plan.window(0, 1, 1)]
    assert [w.phase for w in windows] == [0, 1, 2, 3] and level.grid[0] >= 4
    read = lambda lv, r, c: canvas[lv][:, r[0] : r[1], c[0] : c[1]]  # noqa: E731
    samples = [build_sample(plan, w, read, features, window_noise(plan, w).to(gen.device, gen.dtype), t=0.5)
               for w in windows]
    samples = [samples[i % 4] for i in range(cfg.batch_size)]
    with torch.inference_mode():
        gen.transformer(samples)  # warm-up
        sync(gen)
        t0 = time.perf_counter()
        for _ in range(repeats):
            gen.transformer(samples)
        sync(gen)
    per_forward = (time.perf_counter() - t0) / (repeats * cfg.batch_size)
    return per_forward * forwards


def throughput(args: argparse.Namespace) -> None:
    import torch

    t_load = time.perf_counter()
    gen = load(args)
    sync(gen)
    load_s = time.perf_counter() - t_load
    loaded_rss = rss_mb()
    cuda = gen.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    width_px, height_px = args.size
    steps = args.steps
    log = JsonLines(args.json, "generate")
    done: list[Any] = []
    t0 = time.perf_counter()

    def on_window(window: Any) -> None:  # progress rows, so a run cut by a timeout still tells its rate
        done.append(window)
        if len(done) % 8 == 0:
            log.write(kind="progress", windows_written=len(done), level=window.level, seconds=time.perf_counter() - t0,
                      width_px=width_px, height_px=height_px, steps=steps)

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        sync(gen)
        t0 = time.perf_counter()
        result = gen.generate(REPORT, width_px * args.mpp, height_px * args.mpp, args.mpp, seed=1, steps=steps,
                              out=Path(tmp) / "slide.tiff", progress=False, on_window=on_window)
        sync(gen)
        seconds = time.perf_counter() - t0
        file_mb = (Path(tmp) / "slide.tiff").stat().st_size / 2**20
    peak_gpu_gib = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    peak_rss = peak_rss_mb()
    windows = sum(result.model_windows.values())
    window_px = result.plan.config.window_tokens * result.plan.config.token_px
    tissue_mp = result.model_windows.get(0, 0) * window_px**2 / 1e6  # level-0 windows the model generated
    baseline = model_only_seconds(gen, windows * steps)
    log.write(
        kind="row", status="ok", model=gen.name, device=str(gen.device), width_px=width_px, height_px=height_px,
        mpp=args.mpp, steps=steps, batch_size=gen.config.batch_size, window_px=window_px,
        compression=gen.config.compression, windows=windows, model_windows=result.model_windows,
        background_windows=result.background_windows, tissue_mp=tissue_mp, seconds=seconds,
        s_per_tissue_mp=seconds / max(tissue_mp, 1e-9), model_only_seconds=baseline,
        pipeline_over_model=seconds / baseline, load_seconds=load_s, loaded_rss_mb=loaded_rss, peak_rss_mb=peak_rss,
        peak_gpu_gib=peak_gpu_gib, file_mb=file_mb)
    print(f"memory: peak GPU {'-' if peak_gpu_gib is None else f'{peak_gpu_gib:.1f} GiB'} (max allocated), host RSS "
          f"{loaded_rss:.0f} MB after loading, peak {peak_rss:.0f} MB; load {load_s:.1f} s")
    print(f"\n## throughput: {width_px} x {height_px} px at {args.mpp} µm/px, {steps} steps, model {gen.name}, "
          f"device {gen.device}, window {window_px} px, batch {gen.config.batch_size}")
    print("levels (µm/px: generated + background windows): " + ", ".join(
        f"{lv.mpp:g}: {result.model_windows.get(lv.index, 0)} + {result.background_windows.get(lv.index, 0)}"
        for lv in reversed(result.plan.levels)))
    print("| run | seconds | windows | windows/s | tissue MP (level 0) | s / MP tissue | x model only |")
    print("|---|---|---|---|---|---|---|")
    print(f"| model only (baseline: {windows * steps} window forwards) | {baseline:.1f} | {windows} | "
          f"{windows / baseline:.2f} | {tissue_mp:.2f} | {baseline / max(tissue_mp, 1e-9):.1f} | 1.00 |")
    print(f"| zwsi generate (pipeline) | {seconds:.1f} | {windows} | {windows / seconds:.2f} | {tissue_mp:.2f} | "
          f"{seconds / max(tissue_mp, 1e-9):.1f} | {seconds / baseline:.2f} |")


def mask_child(args: argparse.Namespace) -> None:
    """Peak RSS of the largest tissue mask of a WIDTHxHEIGHT slide: its 2 µm/px level seen at tissue_mpp."""
    import numpy as np

    from slide_io import tissue_mask_rgb
    from slide_io.tissue import mask_factor
    from zwsi.generate.config import GenerateConfig

    level1_mpp = args.mpp * GenerateConfig().plan.factor  # level 0's tissue windows come from level 1's mask
    level1 = tuple(round(v * args.mpp / level1_mpp) for v in reversed(args.size))
    f = mask_factor(level1_mpp, level1, GenerateConfig().tissue_mpp)
    h, w = (-(-v // f) for v in level1)
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    loaded = rss_mb()
    t0 = time.perf_counter()
    tissue_mask_rgb(rgb, level1_mpp * f)
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - t0,
                      "file_mb": 0.0, "windows": 0, "background": 0, "mask": f"{w}x{h}"}))


def child(args: argparse.Namespace) -> None:
    """One memory measurement (run in a subprocess): JSON with peak RSS, loaded RSS, seconds, windows."""
    if args.mask_only:
        mask_child(args)
        return
    gen = load(args)
    loaded = rss_mb()
    width_px, height_px = args.size
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        out = Path(tmp) / "slide.tiff"
        t0 = time.perf_counter()
        result = gen.generate(REPORT, width_px * args.mpp, height_px * args.mpp, args.mpp, seed=1, steps=args.steps,
                              out=out, progress=False)
        seconds = time.perf_counter() - t0
        size_mb = out.stat().st_size / 2**20
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak_rss_mb(), "seconds": seconds, "file_mb": size_mb,
                      "windows": sum(result.model_windows.values()),
                      "background": sum(result.background_windows.values())}))


def memory(args: argparse.Namespace) -> None:
    print(f"\n## peak RSS: model {args.model}, {args.steps} step(s), {args.mpp} µm/px, window_tokens "
          f"{args.window_tokens or 'config'}, vae_tile {args.vae_tile or 'config'} (each size in its own process)")
    print("| slide (px) | seconds | model windows | background windows | file MB | loaded RSS MB (baseline) | "
          "peak RSS MB | x baseline |")
    print("|---|---|---|---|---|---|---|---|")
    runs = [(size, []) for size in args.rss_sizes] + [(size, ["--mask-only"]) for size in args.mask_sizes]
    for size, extra in runs:
        cmd = [sys.executable, __file__, "--child", "--size", size, *extra, *_passthrough(args)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"| {size} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode} |")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if "mask" in r:
            size = f"{size}: tissue mask only ({r['mask']} px)"
        print(f"| {size} | {r['seconds']:.0f} | {r['windows']} | {r['background']} | {r['file_mb']:.1f} | "
              f"{r['loaded_mb']:.0f} | {r['peak_mb']:.0f} | {r['peak_mb'] / r['loaded_mb']:.2f} |", flush=True)


def _passthrough(args: argparse.Namespace) -> list[str]:
    out = ["--model", args.model, "--mpp", str(args.mpp), "--steps", str(args.steps), "--tmp", args.tmp]
    if args.threads:
        out += ["--threads", str(args.threads)]
    for flag, value in (("--device", args.device), ("--config", args.config), ("--batch-size", args.batch_size),
                        ("--window-tokens", args.window_tokens), ("--context-tokens", args.context_tokens),
                        ("--vae-tile", args.vae_tile), ("--compression", args.compression)):
        if value is not None:
            out += [flag, str(value)]
    return out


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h or w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny",
                   help="'tiny' (random weights, MiniLM), 'random:PRESET' (random weights of an S3-DiT preset, e.g. "
                        "random:z-image-turbo; benchmarks/random_pipeline.py) or a hub folder")
    p.add_argument("--device", default=None, help="cpu / cuda (default: the GPU if any)")
    p.add_argument("--config", default=None, help="generation config YAML")
    p.add_argument("--mpp", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--window-tokens", type=int, default=None, help="override the config's window (tokens)")
    p.add_argument("--context-tokens", type=int, default=None)
    p.add_argument("--vae-tile", type=int, default=None, help="VAE decode tile in latents")
    p.add_argument("--compression", default=None, help="TIFF compression override (jpeg needs imagecodecs)")
    p.add_argument("--json", default=None, help="append the throughput row as one JSON line to this file")
    p.add_argument("--size", type=_size, default=(2048, 2048), help="throughput slide WIDTHxHEIGHT px")
    p.add_argument("--rss-sizes", nargs="*", default=["2048x2048", "8192x8192", "100000x1024"],
                   help="memory runs, WIDTHxHEIGHT px each")
    p.add_argument("--rss-steps", type=int, default=1, help="steps in the memory runs")
    p.add_argument("--mask-sizes", nargs="*", default=["100000x100000"],
                   help="slides whose largest tissue-mask computation is measured alone (WIDTHxHEIGHT px)")
    p.add_argument("--mask-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the temporary slides go")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        child(args)
        return
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    if not args.skip_throughput:
        throughput(args)
    if args.rss_sizes:
        args.steps = args.rss_steps
        memory(args)


if __name__ == "__main__":
    main()
