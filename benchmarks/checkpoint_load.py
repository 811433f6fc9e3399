"""Peak memory and time of `load_transformer` against the naive load (build the model, `load_file`, `load_state_dict`).

Each method runs in a fresh subprocess. A sampling thread records the process's anonymous resident memory
(`RssAnon` in /proc/self/status: the memory the process itself owns; file pages that safetensors memory-maps are
reclaimable page cache and are reported separately as the peak `RssFile`). The figure is the peak increase over the
memory held just before the load, divided by the model's size in the load dtype: 1.0 = the weights exist once.

    .venv/bin/python benchmarks/checkpoint_load.py [--dim 1024 --layers 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _rss() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            name, kb = line.split()[:2]
            fields[name.rstrip(":")] = int(kb) * 1024
    return fields


def _child(method: str, folder: str, dtype_name: str) -> None:
    import torch
    from safetensors.torch import load_file

    from zwsi.model.checkpoint import load_transformer
    from zwsi.model.config import S3DiTConfig
    from zwsi.model.s3dit import S3DiT

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    base = _rss()
    peak = dict(base)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for k, v in _rss().items():
                peak[k] = max(peak[k], v)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    if method == "load_transformer":
        model = load_transformer(folder, dtype=dtype)
    else:  # the naive way: a materialised random model, the whole file in memory, then a copy into the model
        model = S3DiT(S3DiTConfig.from_json(Path(folder) / "config.json")).to(dtype)
        model.load_state_dict(load_file(Path(folder) / "diffusion_pytorch_model.safetensors"))
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"seconds": seconds, "model_bytes": model_bytes,
                      "anon": peak["RssAnon"] - base["RssAnon"], "file": peak["RssFile"] - base["RssFile"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "FOLDER", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    import torch

    from zwsi.model.checkpoint import save_pretrained
    from zwsi.model.config import S3DiTConfig
    from zwsi.model.s3dit import S3DiT

    cfg = S3DiTConfig(dim=args.dim, n_layers=args.layers, n_refiner_layers=2, n_heads=args.dim // 128,
                      n_kv_heads=args.dim // 128, cap_feat_dim=256)
    with tempfile.TemporaryDirectory() as folder:
        model = S3DiT(cfg)
        n_params = sum(p.numel() for p in model.parameters())
        save_pretrained(model, folder, max_shard_size="100GB")  # one fp32 file: the naive load's best case
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        rows = []
        for method, dtype in [("naive", "fp32"), ("load_transformer", "fp32"), ("naive", "bf16"),
                              ("load_transformer", "bf16")]:
            out = subprocess.run([sys.executable, __file__, "--child", method, folder, dtype],
                                 capture_output=True, text=True, check=True)
            rows.append((method, dtype, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"S3DiT dim={cfg.dim} n_layers={cfg.n_layers}: {n_params / 1e6:.1f}M params, one fp32 safetensors file")
    print(f"{'method':<18}{'dtype':<6}{'time s':>8}{'model MB':>10}{'peak anon MB':>14}{'x model':>9}"
          f"{'peak mmap MB':>14}{'anon vs naive':>15}")
    naive = {dtype: r["anon"] for method, dtype, r in rows if method == "naive"}
    for method, dtype, r in rows:
        mb = 2**20
        print(f"{method:<18}{dtype:<6}{r['seconds']:>8.2f}{r['model_bytes'] / mb:>10.0f}{r['anon'] / mb:>14.0f}"
              f"{r['anon'] / r['model_bytes']:>9.2f}{r['file'] / mb:>14.0f}{r['anon'] / naive[dtype]:>15.2f}")


if __name__ == "__main__":
    main()
