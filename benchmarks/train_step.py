"""Training-step throughput and peak memory: our S3-DiT beside diffusers' ZImageTransformer2DModel.

One step = forward, flow-matching MSE on the target, backward, AdamW step over the trainable parameters. Both
models get the same config and weights (ours copied into diffusers', strict) and the same plain target-only batch
(Z-Image text-to-image: report + one noisy image); ours also runs a generation-shaped window (phase D: the target,
its 8 neighbour strips and the parent overview, built by the planner), which diffusers' model cannot express.

    .venv/bin/python benchmarks/train_step.py                                   # CPU, small config
    python benchmarks/train_step.py --device cuda --preset z-image-turbo --lora # 6B + LoRA, 1024² windows + context
    python benchmarks/train_step.py --device cuda --preset z-image-turbo --configs lora+ckpt lora full+ckpt full \
        --steps 3 --rounds 1 --json out/results.jsonl                         # the GPU kit's step (c)

Prints a table per configuration: tokens per step, median ms per step, tokens/s, peak memory (CUDA: max allocated,
weights included; CPU: peak RSS increase during the step, sampled) and the ratio of ours to diffusers' on the same
batch. On CUDA the models are built and measured one at a time (`--sequential`, each from seed 0, so the two models'
weights differ; speed does not depend on their values) because a 6B full fine-tune (fp32 weights, gradients and
AdamW state: ~100 GB) fits one GPU only alone; an out-of-memory is recorded as the row's result.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from bench_json import JsonLines

from zwsi.model import S3DiT, S3DiTConfig
from zwsi.model.config import PRESETS
from zwsi.model.sequence import t2i_sample
from zwsi.planner import PlanConfig, build_sample, plan_slide


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class PeakMemory:
    """Peak memory of a block: CUDA max allocated, or on CPU the peak RSS increase sampled every 2 ms."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
        else:
            self._base, self._stop = rss_mb(), False
            self._max = self._base

            def sample() -> None:
                while not self._stop:
                    self._max = max(self._max, rss_mb())
                    time.sleep(0.002)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop = True
            self._thread.join()
            self.peak = self._max - self._base


def _trim() -> None:
    """Give freed heap back to the OS (glibc), so the next block's RSS increase is its own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def build_config(args: argparse.Namespace) -> S3DiTConfig:
    if args.preset:
        return S3DiTConfig.preset(args.preset)
    heads = args.dim // 64
    third = 64 // 4
    return S3DiTConfig(**{**PRESETS["tiny"], "dim": args.dim, "n_layers": args.layers, "n_heads": heads,
                          "n_kv_heads": heads, "cap_feat_dim": args.cap_dim, "axes_dims": (third, 24, 24)})


def with_lora(model: torch.nn.Module, rank: int) -> torch.nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=r"^(layers|noise_refiner|context_refiner)\.\d+\.("
                     r"attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.(w1|w2|w3))$")
    model = inject_adapter_in_model(cfg, model)
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
        if "lora_" in n:
            p.data = p.data.float()
    return model


def context_window(cfg: S3DiTConfig, n_tokens: int, report: torch.Tensor, device: torch.device, dtype: torch.dtype) -> Any:
    """A phase-D window in the interior of a level: target, 8 neighbour strips and the parent overview (planner)."""
    pc = PlanConfig(window_tokens=n_tokens, context_tokens=max(1, n_tokens // 8), overview_margin=max(1, n_tokens // 16),
                    latent_channels=cfg.in_channels)
    px = 3 * n_tokens * pc.token_px
    plan = plan_slide(px * 0.5, px * 0.5, 0.5, seed=0, coarsest_mpp=2.0, config=pc)
    window = plan.window(0, 1, 1)
    gen = torch.Generator().manual_seed(1)

    def read(level: int, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        return torch.randn(cfg.in_channels, rows[1] - rows[0], cols[1] - cols[0], generator=gen)

    n = pc.window_latents
    target = torch.randn(cfg.in_channels, 1, n, n, generator=gen).to(device, dtype)
    return build_sample(plan, window, read, report, target, t=0.4)


def tokens_of(sample: Any, p: int) -> int:
    _, f, h, w = sample.target.latents.shape
    return f * (h // p) * (w // p) + sum(c.positions.shape[0] for c in sample.contexts) + sample.report.shape[0]


def timed_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    for _ in range(warmup):
        step()
    times = []
    with PeakMemory(device) as mem:
        for _ in range(steps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000, mem.peak


def make_step(model: torch.nn.Module, forward: Callable[[], list[torch.Tensor]], targets: list[torch.Tensor],
              dtype: torch.dtype, device: torch.device, fused: bool = False) -> Callable[[], None]:
    """forward under autocast, MSE on the target, backward, AdamW step (fused: one kernel per step, no temporaries
    of the parameters' size; the foreach default allocates such temporaries, which matters at 6B)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, **({"fused": True} if fused else {}))

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = forward()
            loss = torch.stack([((o.float() - y.float()) ** 2).mean() for o, y in zip(out, targets)]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step.optimizer = opt  # type: ignore[attr-defined]  (benchmarks/fake_estimate.py tracks its state)
    return step


CONFIGS = ("lora+ckpt", "lora", "full+ckpt", "full")
"""Training configurations, most useful first: LoRA with checkpointing is the real fine-tune's recipe
(configs/train/lora-z-image-turbo.yaml); a full fine-tune of 6B on one GPU is for the memory table (FSDP is the
full fine-tune's recipe)."""


def build_model(kind: str, cfg: S3DiTConfig, device: torch.device, weight_dtype: torch.dtype, lora_rank: int | None,
                checkpointing: bool, state: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    """Our S3DiT or diffusers' model of the same config, random weights from seed 0 (or `state`), LoRA if asked."""
    torch.manual_seed(0)
    with torch.device(device):
        if kind == "ours":
            model = S3DiT(cfg).to(weight_dtype)
        else:
            from diffusers import ZImageTransformer2DModel

            model = ZImageTransformer2DModel(**{k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in cfg.to_dict().items() if k != "siglip_feat_dim"})
            model = model.to(weight_dtype)
    if state is not None:
        model.load_state_dict(state, strict=True)  # the same weights as the other model
    if checkpointing:
        model.enable_gradient_checkpointing()
    if lora_rank:
        model = with_lora(model, lora_rank)
    return model.train()


def run_config(name: str, args: argparse.Namespace, cfg: S3DiTConfig, device: torch.device, dtype: torch.dtype,
               log: JsonLines) -> list[tuple]:
    """Time one training configuration: diffusers and ours on the t2i batch, ours on the phase-D batch. Returns the
    table rows (model, batch, tokens, ms, peak MB, trainable, status)."""
    lora = name.startswith("lora")
    checkpointing = name.endswith("+ckpt")
    cuda = device.type == "cuda"
    weight_dtype = dtype if lora else torch.float32  # full fine-tune: fp32 master weights under autocast
    n_tokens = args.window_tokens or (64 if cuda else 16)
    p = cfg.patch_size
    gen = torch.Generator().manual_seed(0)
    n = n_tokens * p
    xs = [torch.randn(cfg.in_channels, 1, n, n, generator=gen).to(device, dtype) for _ in range(args.batch)]
    caps = [torch.randn(args.report_tokens, cfg.cap_feat_dim, generator=gen).to(device, dtype) for _ in range(args.batch)]
    ts = torch.full((args.batch,), 0.4, device=device)
    targets = [torch.randn_like(x) for x in xs]
    t2i = [t2i_sample(x, 0.4, c) for x, c in zip(xs, caps)]
    ctx = [context_window(cfg, n_tokens, c, device, dtype) for c in caps]
    rank = args.rank if lora else None
    runs = [("diffusers ZImageTransformer2DModel", "target only (t2i)", "reference", t2i),
            ("S3DiT (ours)", "target only (t2i)", "ours", t2i),
            ("S3DiT (ours)", "phase D: target + 8 strips + overview", "ours", ctx)]
    fused = args.fused if args.fused is not None else cuda

    def forward_of(kind: str, model: torch.nn.Module, batch: list) -> Callable[[], list[torch.Tensor]]:
        if kind == "reference":  # diffusers: t in [0, 1], 0 = noise, like ours
            return lambda: model(xs, 1.0 - ts, caps, return_dict=False)[0]
        return lambda: model(batch)

    times: dict[int, list[float]] = {i: [] for i in range(len(runs))}
    peaks: dict[int, float] = {i: 0.0 for i in range(len(runs))}
    status: dict[int, str] = {i: "ok" for i in range(len(runs))}
    trainable: dict[int, int] = {}
    if not args.sequential:  # both models resident, the same weights, rounds interleaved (a busy CPU hits all alike)
        ours = build_model("ours", cfg, device, weight_dtype, None, checkpointing, None)
        ref = build_model("reference", cfg, device, weight_dtype, None, checkpointing, ours.state_dict())
        if rank:
            ours, ref = with_lora(ours, rank), with_lora(ref, rank)
        models = {"reference": ref, "ours": ours}
        steps = [make_step(models[k], forward_of(k, models[k], b), targets, dtype, device, fused) for _, _, k, b in runs]
        for i, (_, _, k, _) in enumerate(runs):
            trainable[i] = sum(q.numel() for q in models[k].parameters() if q.requires_grad)
        for _ in range(args.rounds):
            for i, step in enumerate(steps):
                gc.collect()
                _trim()
                ms, peak = timed_steps(step, device, args.warmup, args.steps)
                times[i].append(ms)
                peaks[i] = max(peaks[i], peak)
    else:  # one model at a time (a full fine-tune of 6B fits one GPU only alone); OOM is a result, not a crash
        for i, (_, _, kind, batch) in enumerate(runs):
            model = step = None
            try:
                model = build_model(kind, cfg, device, weight_dtype, rank, checkpointing, None)
                trainable[i] = sum(q.numel() for q in model.parameters() if q.requires_grad)
                step = make_step(model, forward_of(kind, model, batch), targets, dtype, device, fused)
                for _ in range(args.rounds):
                    ms, peak = timed_steps(step, device, args.warmup, args.steps)
                    times[i].append(ms)
                    peaks[i] = max(peaks[i], peak)
            except torch.cuda.OutOfMemoryError as exc:
                status[i] = f"oom: {str(exc).splitlines()[0][:300]}"
            finally:
                del model, step
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
    rows = []
    for i, (model_name, batch_name, _, batch) in enumerate(runs):
        tok = sum(tokens_of(s, p) for s in batch)
        ms = statistics.median(times[i]) if times[i] else float("nan")
        rows.append((model_name, batch_name, tok, ms, peaks[i], trainable.get(i, 0), status[i]))
        log.write(kind="row", config=name, model=model_name, batch=batch_name, status=status[i], tokens=tok,
                  ms_per_step=ms, tokens_per_s=tok / ms * 1000 if times[i] else None, peak_mb=peaks[i],
                  trainable=trainable.get(i), lora_rank=rank, checkpointing=checkpointing, dtype=str(dtype),
                  weight_dtype=str(weight_dtype), fused_adamw=fused, window_tokens=n_tokens,
                  report_tokens=args.report_tokens, batch_size=args.batch, steps=args.steps, rounds=args.rounds)
    return rows


def print_table(name: str, rows: list[tuple], args: argparse.Namespace, cfg: S3DiTConfig, device: torch.device,
                dtype: torch.dtype) -> None:
    cuda = device.type == "cuda"
    n_tokens = args.window_tokens or (64 if cuda else 16)
    where = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"\ntrain_step [{name}]: {where}; dim {cfg.dim}, {cfg.n_layers} layers, {n_tokens}x{n_tokens}-token windows "
          f"({n_tokens * cfg.patch_size * 8} px), report {args.report_tokens} tokens, batch {args.batch}, "
          f"{str(dtype).split('.')[-1]}, trainable {rows[1][5]:,}, median of {args.rounds} rounds x {args.steps} steps"
          f"{' (one model at a time)' if args.sequential else ''}\n")
    base_ms, base_peak = rows[0][3], rows[0][4]
    print("| model | batch | tokens/step | ms/step | tokens/s | peak MB | time vs diffusers | memory vs diffusers |")
    print("|---|---|---|---|---|---|---|---|")
    for model_name, batch_name, tok, ms, peak, _, status in rows:
        if status != "ok":
            print(f"| {model_name} | {batch_name} | {tok:,} | {status} | | | | |")
            continue
        same = batch_name == "target only (t2i)"
        tr = f"{ms / base_ms:.2f}x" if same and base_ms == base_ms else "n/a (no context in diffusers)"
        mr = f"{peak / base_peak:.2f}x" if same and base_peak > 0 else "n/a"
        print(f"| {model_name} | {batch_name} | {tok:,} | {ms:.1f} | {tok / ms * 1000:,.0f} | {peak:,.0f} | {tr} | {mr} |",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--preset", default=None, help="S3DiT preset (e.g. z-image-turbo); default a small config")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--cap-dim", type=int, default=256)
    ap.add_argument("--window-tokens", type=int, default=None, help="target side in tokens (default 16 CPU, 64 CUDA)")
    ap.add_argument("--report-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--lora", action="store_true", help="train LoRA adapters (rank --rank) instead of all weights")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16"), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (both models)")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=None,
                    help="several configurations in one process (default: the one --lora/--checkpointing name)")
    ap.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                    help="one model resident at a time (default on CUDA: a 6B full fine-tune fits only alone)")
    ap.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                    help="fused AdamW (default on CUDA)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (median over all)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.sequential is None:
        args.sequential = cuda
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if cuda else "fp32")]
    cfg = build_config(args)
    configs = args.configs or [("lora" if args.lora else "full") + ("+ckpt" if args.checkpointing else "")]
    log = JsonLines(args.json, "train_step")
    for name in configs:
        try:
            rows = run_config(name, args, cfg, device, dtype, log)
        except Exception as exc:  # one broken configuration must not cost the others
            log.write(kind="row", config=name, status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            print(f"\ntrain_step [{name}]: error {type(exc).__name__}: {exc}", flush=True)
            continue
        print_table(name, rows, args, cfg, device, dtype)


if __name__ == "__main__":
    main()
