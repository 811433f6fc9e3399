"""Markdown tables of a GPU kit `results.jsonl`, goals marked, for benchmarks/RESULTS.md.

    python benchmarks/gpu/report.py /path/to/files_at/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

GB = 1e9


def load(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the rest stands
            continue
    return records


def _f(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def machine(records: list[dict[str, Any]]) -> list[str]:
    env = next((r for r in records if r.get("bench") == "probe" and r.get("kind") == "environment"), {})
    lines = [f"Machine: {env.get('gpu', 'CPU (dry run)')}, {_f(env.get('gpu_memory_gib'))} GiB, "
             f"{env.get('cpus')} CPUs; Python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
             f"cuDNN {env.get('cudnn')}"]
    missing = sorted(k for k, v in (env.get("modules") or {}).items() if str(v).startswith("unavailable"))
    if missing:
        lines.append(f"Modules unavailable there: {', '.join(missing)}")
    for r in records:
        if r.get("bench") == "probe" and r.get("kind") == "gemm":
            lines.append(f"GEMM {r['n']}³ {r['dtype']}: {r['tflops']:.0f} TFLOP/s")
        if r.get("bench") == "probe" and r.get("kind") == "attention":
            what = f"{r['tflops']:.0f} TFLOP/s" if "tflops" in r else r.get("error", "?")
            lines.append(f"SDPA {r['kernel']} ({r.get('heads')} x {r.get('head_dim')}, {r.get('tokens')} tokens): {what}")
    return lines


def steps(records: list[dict[str, Any]]) -> list[str]:
    out = ["| step | status | seconds | note |", "|---|---|---|---|"]
    for r in records:
        if r.get("bench") == "kit" and r.get("kind") in ("step", "install"):
            name = f"{r.get('step', '')} {r.get('name', r['kind'])}".strip()
            out.append(f"| {name} | {r['status']} | {_f(r.get('seconds'))} | {r.get('reason', '')} |")
    tests = [r for r in records if r.get("bench") == "pytest_gpu"]
    if tests:
        counts = Counter(r["outcome"] for r in tests)
        out.append("")
        out.append("GPU tests: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        for r in tests:
            if r["outcome"] in ("failed", "error"):
                out.append(f"- FAILED {r['test']}: {r['message'].splitlines()[0] if r['message'] else ''}")
    return out


def model_forward(records: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in records if r.get("bench") == "model_forward" and r.get("kind") == "row"]
    out = ["| backend | compiled | size | tokens | mode | diffusers ms | zwsi ms | ratio | zwsi tok/s | TFLOP/s | "
           "rel diff | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['backend']} | {r['compiled']} | {r['size']} |"
        if r["status"] != "ok":
            out.append(f"{head} {r['status']}: {r.get('reason') or r.get('error', '')} | | | | | | | | |")
            continue
        ref = f"{_f(r['diffusers_ms'])}{'*' if r.get('diffusers_from') != 'same case' else ''}"
        out.append(f"{head} {r['tokens']} | {r['mode']} | {ref} | {r['zwsi_ms']:.1f} | {_f(r['ratio'], '.2f')} | "
                   f"{r['zwsi_tokens_per_s']:,.0f} | {_f(r['zwsi_tflops'], '.0f')} | {_f(r['rel_diff'], '.1e')} | "
                   f"{_f(r['peak_gib'])} |")
    out.append("(* diffusers under default SDPA at the same size and mode)")
    return out


def train_step(records: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in records if r.get("bench") == "train_step" and r.get("kind") == "row"]
    out = ["| config | model | batch | tokens | ms/step | tokens/s | peak GB | status |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r.get("peak_mb")
        out.append(f"| {r['config']} | {r.get('model', '')} | {r.get('batch', '')} | {r.get('tokens', '')} | "
                   f"{_f(r.get('ms_per_step'))} | {_f(r.get('tokens_per_s'), ',.0f')} | "
                   f"{_f(None if peak is None else peak * 2**20 / GB)} | {r['status'] if r['status'] == 'ok' else r['status'] + ' ' + r.get('error', '')} |")
    return out


def generate(records: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in records if r.get("bench") == "generate"]
    done = [r for r in rows if r.get("kind") == "row"]
    if done:
        r = done[-1]
        return [f"{r['width_px']} x {r['height_px']} px, {r['steps']} steps, batch {r['batch_size']}, {r['compression']}: "
                f"{r['seconds']:.1f} s for {r['windows']} windows, {r['s_per_tissue_mp']:.2f} s / tissue MP "
                f"(model only {r['model_only_seconds']:.1f} s, x{r['pipeline_over_model']:.2f}); peak GPU "
                f"{_f(r['peak_gpu_gib'])} GiB, host RSS {r['peak_rss_mb']:.0f} MB (loaded {r['loaded_rss_mb']:.0f} MB)"]
    progress = [r for r in rows if r.get("kind") == "progress"]
    if progress:
        r = progress[-1]
        return [f"cut before the end: {r['windows_written']} windows written in {r['seconds']:.1f} s "
                f"(level {r['level']}, {r['steps']} steps)"]
    return ["no generation result"]


def goals(records: list[dict[str, Any]]) -> list[str]:
    mf = {(r["backend"], r["compiled"], r["size"], r["mode"]): r for r in records
          if r.get("bench") == "model_forward" and r.get("kind") == "row" and r.get("status") == "ok"}
    ts = {(r["config"], r.get("batch")): r for r in records if r.get("bench") == "train_step" and r.get("status") == "ok"
          and r.get("model") == "S3DiT (ours)"}
    gen = [r for r in records if r.get("bench") == "generate" and r.get("kind") == "row"]
    out = ["| goal | measured | met |", "|---|---|---|"]

    def row(goal: str, value: float | None, ok: bool | None, fmt: str) -> None:
        out.append(f"| {goal} | {_f(value, fmt)} | {'-' if ok is None else ('yes' if ok else 'NO')} |")

    fwd = mf.get(("sdpa", True, 1024, "fwd"))
    row("compiled forward 1024², diffusers / ours >= 1.1", fwd and fwd["ratio"], fwd and fwd["ratio"] >= 1.1, ".2f")
    train = mf.get(("sdpa", True, 1024, "train"))
    row("compiled training tokens/s 1024², ours / diffusers >= 1.1", train and train["ratio"],
        train and train["ratio"] >= 1.1, ".2f")
    lora = ts.get(("lora+ckpt", "phase D: target + 8 strips + overview"))
    peak = lora and lora["peak_mb"] * 2**20 / GB
    row("LoRA + checkpointing, 1024² + context, peak GB <= 75", peak, lora and peak <= 75, ".1f")
    rate = gen[-1]["s_per_tissue_mp"] if gen else None
    row("generation s / tissue MP at 8 steps <= 1.5", rate, None if rate is None else rate <= 1.5, ".2f")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path)
    args = ap.parse_args(argv)
    records = load(args.results)
    for title, lines in (("Machine", machine(records)), ("Steps", steps(records)), ("Goals", goals(records)),
                         ("model_forward.py", model_forward(records)), ("train_step.py", train_step(records)),
                         ("generate.py", generate(records))):
        print(f"\n### {title}\n")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
