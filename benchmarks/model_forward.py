"""S3-DiT forward (and training step) speed: zwsi's S3DiT against diffusers' ZImageTransformer2DModel.

Both models run in the same process with the same weights (ours shares diffusers' tensors), the same inputs and the
same config; each row gives the time of each, the ratio (diffusers / ours, > 1 = we are faster), our TFLOP/s (FLOPs
counted once per size and mode with `torch.utils.flop_counter` on our eager model) and the relative difference of
the outputs.

A row is one case: (attention backend, eager or compiled, image size, fwd or train). Compiled = regional
compilation: every transformer block compiled once (diffusers' `compile_repeated_blocks`, our blocks' `.compile()`),
switched on and off between cases without recompiling. `sdpa:cudnn`, `sdpa:flash` and `sdpa:efficient` are our
`sdpa` backend with PyTorch's SDPA kernel forced (`torch.nn.attention.sdpa_kernel`), diffusers under the same kernel.
For backends diffusers has no equivalent of (`varlen`, `flash_attn`, `sdpa_masked`, `math`) its time is the one
measured for the same size and mode under default SDPA (marked `diffusers_from: sdpa`).

    # CPU, a small config (about a minute on a 2-core machine)
    python benchmarks/model_forward.py --train
    # GPU, full 6.155B Turbo config, 1024^2 and 2048^2: the GPU kit's ordered plan (most valuable cases first)
    python benchmarks/model_forward.py --device cuda --plan kit --json out/results.jsonl
    # GPU, any product of backends x {eager, compiled} x sizes x {fwd, train}
    python benchmarks/model_forward.py --device cuda --attention sdpa varlen --compile --train
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from bench_json import JsonLines

from zwsi.model import S3DiT, S3DiTConfig
from zwsi.model.attention import flash_attn_available

# A CPU-sized config with Turbo's head geometry (head_dim 128 = 32 + 48 + 48).
BENCH_SMALL = S3DiTConfig(
    dim=512, n_layers=4, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=256, axes_dims=(32, 48, 48)
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SDPA_KERNELS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                "math": "MATH"}
CUDA_ONLY = ("varlen", "flash_attn", "sdpa:cudnn", "sdpa:flash", "sdpa:efficient")


@dataclass(frozen=True)
class Case:
    """One row: attention backend, regional compilation on/off, index into --sizes, "fwd" or "train"."""

    backend: str
    compiled: bool
    size_index: int
    mode: str


# The GPU kit's plan, most valuable first (DESIGN §7 / issue 17 goals: compiled forward and compiled training step
# at the small size against diffusers), so a timeout cuts the least valuable rows. Size 0 = 1024², 1 = 2048².
KIT_PLAN = (
    Case("sdpa", False, 0, "fwd"),
    Case("sdpa", True, 0, "fwd"),
    Case("sdpa", False, 0, "train"),
    Case("sdpa", True, 0, "train"),
    Case("sdpa", False, 1, "fwd"),
    Case("varlen", False, 0, "fwd"),
    Case("varlen", False, 1, "fwd"),
    Case("sdpa:cudnn", False, 0, "fwd"),
    Case("sdpa:flash", False, 0, "fwd"),
    Case("sdpa:efficient", False, 0, "fwd"),
    Case("flash_attn", False, 0, "fwd"),
    Case("sdpa", True, 1, "fwd"),
    Case("varlen", True, 0, "fwd"),
    Case("varlen", False, 0, "train"),
    Case("sdpa_masked", False, 0, "fwd"),
)


def build_models(cfg: S3DiTConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """diffusers' model with random weights, and ours sharing the very same tensors (load_state_dict(assign=True))."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    with torch.device(device):
        reference = ZImageTransformer2DModel(**cfg.to_dict()).to(dtype)
    with torch.device("meta"):  # no memory: its parameters become diffusers' tensors below
        ours = S3DiT(cfg)
    with torch.no_grad():  # the zero-initialised pad tokens get values so padded tokens are not trivial
        reference.x_pad_token.normal_(0, 0.02)
        reference.cap_pad_token.normal_(0, 0.02)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    return reference.eval(), ours.eval()


def make_inputs(
    cfg: S3DiTConfig, size_px: int, batch: int, caption_len: int, device: torch.device, dtype: torch.dtype, mixed: bool
):
    """batch latents of size_px² (with `mixed`, every other one is half the size), captions 13 tokens apart."""
    gen = torch.Generator(device="cpu").manual_seed(size_px)
    latents = [size_px // 8 // (2 if mixed and i % 2 else 1) for i in range(batch)]
    x = [torch.randn(cfg.in_channels, 1, n, n, generator=gen).to(device, dtype) for n in latents]
    caps = [torch.randn(caption_len + 13 * i, cfg.cap_feat_dim, generator=gen).to(device, dtype) for i in range(batch)]
    t = torch.linspace(0.3, 0.7, batch, device=device)
    return x, t, caps


def _now(device: torch.device) -> float:
    """CUDA: wall time after a sync. CPU: this process's CPU time, which a shared, busy machine does not inflate
    (run with one thread so that it equals the compute time)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter()
    return time.process_time()


def timed_pair(
    fns: list[Callable[[], object]], device: torch.device, warmup: int, reps: int
) -> tuple[list[float], list[object]]:
    """Median time (ms) of each fn after warm-up, the fns interleaved rep by rep so that a busy machine slows
    all alike; and each fn's last result."""
    outs: list[object] = [None] * len(fns)
    for i, fn in enumerate(fns):
        for _ in range(warmup):
            outs[i] = fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            start = _now(device)
            outs[i] = fn()
            times[i].append((_now(device) - start) * 1e3)
    return [sorted(ts)[len(ts) // 2] for ts in times], outs


def train_step(model_call: Callable[[], list[torch.Tensor]], params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    """Forward, a flow-matching-like MSE against a fixed target, backward; gradients dropped afterwards."""
    out = model_call()
    loss = sum(((o.float() - 0.5) ** 2).mean() for o in out)
    loss.backward()
    for p in params:
        p.grad = None
    return [o.detach() for o in out]


def rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(((x.float() - y.float()).norm() / y.float().norm()).item() for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------------------------
#  Regional compilation that can be switched off and on again without recompiling
# ---------------------------------------------------------------------------------------------------------------
def raise_recompile_limits(limit: int = 64) -> None:
    """Each size, grad mode and attention layout is its own graph per block class; the default limit (8) would
    silently fall back to eager. The config names changed over torch versions (cache_size_limit -> recompile_limit)."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, limit)
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 16 * limit))


class RegionalCompile:
    """Compiles every repeated block of both models once (diffusers: `compile_repeated_blocks`; ours: each
    S3DiTBlock's `.compile()`), then switches the compiled call on and off per case (`nn.Module.compile` keeps it
    in `_compiled_call_impl`)."""

    def __init__(self, reference: torch.nn.Module, ours: S3DiT, backend: str) -> None:
        self.reference, self.ours, self.backend = reference, ours, backend
        self._impls: dict[torch.nn.Module, object] = {}

    def _blocks(self) -> list[torch.nn.Module]:
        return [m for m in (*self.reference.modules(), *self.ours.modules()) if getattr(m, "_compiled_call_impl", None)]

    def enable(self, on: bool) -> None:
        if on and not self._impls:
            raise_recompile_limits()
            self.reference.compile_repeated_blocks(fullgraph=False, backend=self.backend)
            for blocks in (self.ours.noise_refiner, self.ours.context_refiner, self.ours.layers):
                for block in blocks:
                    block.compile(backend=self.backend)
            self._impls = {m: m._compiled_call_impl for m in self._blocks()}
            if not self._impls:
                raise RuntimeError("regional compilation compiled no block (nn.Module.compile changed?)")
        for module, impl in self._impls.items():
            module._compiled_call_impl = impl if on else None


@contextlib.contextmanager
def sdpa_kernel(name: str | None) -> Iterator[None]:
    """Force one of PyTorch's SDPA kernels (None: PyTorch's own choice)."""
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend
    from torch.nn.attention import sdpa_kernel as force

    with force([getattr(SDPBackend, SDPA_KERNELS[name])]):
        yield


# ---------------------------------------------------------------------------------------------------------------
#  The benchmark
# ---------------------------------------------------------------------------------------------------------------
def plan_cases(args: argparse.Namespace) -> list[Case]:
    if args.plan == "kit":
        return [c for c in KIT_PLAN if c.size_index < len(args.sizes) and (args.train or c.mode == "fwd")]
    modes = ["fwd"] + (["train"] if args.train else [])
    compiled = [True] if args.compile else [False]
    return [Case(b, c, s, m) for s, m, b, c in itertools.product(range(len(args.sizes)), modes, args.attention, compiled)]


def skip_reason(case: Case, device: torch.device) -> str | None:
    if device.type != "cuda" and case.backend in CUDA_ONLY:
        return f"attention backend {case.backend!r} needs CUDA"
    if case.backend == "flash_attn" and not flash_attn_available():
        return "flash-attn is not installed (no wheel for this stack)"
    if device.type == "cuda" and case.backend == "varlen":
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen"
    return None


def count_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cfg = BENCH_SMALL if args.preset == "bench-small" else S3DiTConfig.preset(args.preset)
    log = JsonLines(args.json, "model_forward")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    reference, ours = build_models(cfg, device, dtype)
    if args.checkpointing:
        reference.enable_gradient_checkpointing()
        ours.enable_gradient_checkpointing()
    regional = RegionalCompile(reference, ours, args.compile_backend)
    n_params = sum(p.numel() for p in ours.parameters())
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} thread(s), process CPU time"
    print(f"S3-DiT forward benchmark: {n_params / 1e9:.3f}B params, {args.dtype}, {dev_name}, torch {torch.__version__}")
    print(f"config: dim={cfg.dim} layers={cfg.n_layers}+2x{cfg.n_refiner_layers} heads={cfg.n_heads}; "
          f"batch {args.batch}{' mixed sizes' if args.mixed else ''}, caption {args.caption_len} tokens; "
          f"checkpointing={args.checkpointing}; compile backend {args.compile_backend}; ratio = diffusers / zwsi")
    log.write(kind="header", device=dev_name, torch=torch.__version__, params=n_params, dtype=args.dtype,
              preset=args.preset, batch=args.batch, caption_len=args.caption_len, checkpointing=args.checkpointing)
    header = (f"{'backend':>15} {'compiled':>8} {'size':>6} {'tokens':>7} {'mode':>6} {'diffusers ms':>13} "
              f"{'zwsi ms':>9} {'ratio':>6} {'zwsi tok/s':>11} {'TFLOP/s':>8} {'rel diff':>9} {'peak GiB':>9}")
    print(header, flush=True)

    inputs: dict[int, tuple] = {}
    flops: dict[tuple[int, str], int] = {}
    diffusers_ms: dict[tuple[int, str, bool], float] = {}  # default-SDPA diffusers time per (size, mode, compiled)
    params = {m: list(m.parameters()) for m in (reference, ours)}
    for case in plan_cases(args):
        size = args.sizes[case.size_index]
        row = {"kind": "row", "backend": case.backend, "compiled": case.compiled, "size": size, "mode": case.mode}
        reason = skip_reason(case, device)
        if reason is not None:
            log.write(**row, status="skipped", reason=reason)
            print(f"{case.backend:>15} {case.compiled!s:>8} {size:>6} skipped: {reason}", flush=True)
            continue
        try:
            if size not in inputs:
                inputs[size] = make_inputs(cfg, size, args.batch, args.caption_len, device, dtype, args.mixed)
            x, t, caps = inputs[size]
            tokens = sum((xi.shape[-1] // cfg.patch_size) ** 2 + c.shape[0] for xi, c in zip(x, caps))
            kernel = case.backend.split(":", 1)[1] if case.backend.startswith("sdpa:") else None
            ours.attention_backend = "sdpa" if kernel else case.backend
            calls = {"diffusers": lambda: reference(x, t, caps, return_dict=False)[0],
                     "zwsi": lambda: ours.forward_t2i(x, t, caps)}
            if case.mode == "train":
                calls = {k: (lambda c=c, m=m: train_step(c, params[m]))
                         for (k, c), m in zip(calls.items(), (reference, ours))}
            measure_reference = kernel is not None or case.backend == "sdpa" or \
                (case.size_index, case.mode, case.compiled) not in diffusers_ms
            names = (["diffusers"] if measure_reference else []) + ["zwsi"]
            if (case.size_index, case.mode) not in flops:
                regional.enable(False)
                with torch.no_grad() if case.mode == "fwd" else contextlib.nullcontext():
                    flops[(case.size_index, case.mode)] = count_flops(calls["zwsi"])
            regional.enable(case.compiled)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            for m in (reference, ours):
                m.train(case.mode == "train")
            with sdpa_kernel(kernel), torch.no_grad() if case.mode == "fwd" else contextlib.nullcontext():
                ms, outs = timed_pair([calls[n] for n in names], device, args.warmup, args.reps)
            got = dict(zip(names, ms))
            if measure_reference and kernel is None and case.backend == "sdpa":
                diffusers_ms[(case.size_index, case.mode, case.compiled)] = got["diffusers"]
            d_ms = got.get("diffusers", diffusers_ms.get((case.size_index, case.mode, case.compiled)))
            z_ms = got["zwsi"]
            diff = rel_diff(outs[-1], outs[0]) if measure_reference else float("nan")
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
            tflops = flops[(case.size_index, case.mode)] / (z_ms * 1e-3) / 1e12
            log.write(**row, status="ok", tokens=tokens, diffusers_ms=d_ms, zwsi_ms=z_ms,
                      ratio=None if d_ms is None else d_ms / z_ms,
                      diffusers_from="same case" if measure_reference else "sdpa", zwsi_tokens_per_s=tokens / z_ms * 1e3,
                      zwsi_tflops=tflops, flops=flops[(case.size_index, case.mode)], rel_diff=diff, peak_gib=peak,
                      warmup=args.warmup, reps=args.reps)
            d_txt = f"{d_ms:>13.1f}" if d_ms is not None else f"{'-':>13}"
            r_txt = f"{d_ms / z_ms:>6.2f}" if d_ms is not None else f"{'-':>6}"
            print(f"{case.backend:>15} {case.compiled!s:>8} {size:>6} {tokens:>7} {case.mode:>6} {d_txt} {z_ms:>9.1f} "
                  f"{r_txt} {tokens / z_ms * 1e3:>11.0f} {tflops:>8.1f} {diff:>9.1e} {peak:>9.1f}", flush=True)
        except Exception as exc:  # one broken case (an OOM, a missing kernel) must not cost the other rows
            log.write(**row, status="error", error=f"{type(exc).__name__}: {exc}"[:2000])
            print(f"{case.backend:>15} {case.compiled!s:>8} {size:>6} error: {type(exc).__name__}: {exc}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            for m in (reference, ours):
                m.eval()
                for p in params[m]:
                    p.grad = None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default=None, choices=["bench-small", "tiny", "z-image-turbo"],
                        help="model config (default: bench-small on CPU, z-image-turbo on CUDA)")
    parser.add_argument("--dtype", default=None, choices=list(DTYPES), help="default: fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="image sizes in pixels (default: 256 512 on CPU, 1024 2048 on CUDA)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--caption-len", type=int, default=100, help="caption tokens of the first sample")
    parser.add_argument("--mixed", action="store_true",
                        help="every other sample at half the size: diffusers pads the batch, zwsi packs it")
    parser.add_argument("--plan", choices=["product", "kit"], default="product",
                        help="'kit': the GPU kit's ordered cases (implies --train); 'product': --attention x sizes "
                             "x modes, eager or (--compile) compiled")
    parser.add_argument("--train", action="store_true", help="also time one training step (forward + backward)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both models")
    parser.add_argument("--compile", action="store_true", help="regional compilation of both models")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend ('eager' traces with dynamo only: the kit's CPU dry run)")
    parser.add_argument("--attention", nargs="+", default=["sdpa"],
                        help="zwsi attention backends (zwsi.model.attention.BACKENDS, or sdpa:cudnn|flash|efficient)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 3 on CUDA")
    parser.add_argument("--reps", type=int, default=None, help="default: 3 on CPU, 10 on CUDA")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; times are process CPU time (default 1)")
    parser.add_argument("--json", default=None, help="append one JSON line per row to this file")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.preset = args.preset or ("z-image-turbo" if cuda else "bench-small")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.sizes = args.sizes or ([1024, 2048] if cuda else [256, 512])
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.reps = args.reps or (10 if cuda else 3)
    if args.plan == "kit":
        args.train = True
    return args


if __name__ == "__main__":
    main(parse_args())
