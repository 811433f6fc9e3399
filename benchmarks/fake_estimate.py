"""What the GPU kit will measure, estimated on the CPU with fake tensors: FLOPs, peak memory and the implied time.

Every case runs the real code (our S3DiT at the full Z-Image-Turbo size, the real LoRA injection, autocast, AdamW)
under PyTorch's `FakeTensorMode`: tensors have shapes, dtypes and devices but no storage, so a 6B training step
costs seconds of CPU and no memory. `FlopCounterMode` counts the FLOPs of every matmul and attention call
(checkpointing's recomputation included), and a dispatch mode (`LiveBytes`) sums the bytes of every live storage
(parameters, gradients, optimizer state, activations, temporaries) and reports the peak; it agrees with
`torch.distributed._tools.mem_tracker.MemTracker` (15.9 GiB for the 1024² forward), which costs ~10x the CPU time
and cannot follow frozen parameters (a LoRA base: it hooks every parameter's gradient). The time is
the FLOPs at the bf16 GEMM rate DESIGN §7 measured on an H100 (790 TFLOP/s; the H200 has the same compute): a
floor, which the reference's compiled forward reached at 77%.

Forward cases run on fake CUDA tensors with the `varlen` attention backend (the CUDA-only code path: cu_seqlens,
`torch.nn.attention.varlen`, flash attention's fake kernel): SDPA's own CUDA kernel choice needs a real GPU's
properties, and without them it falls back to the math kernel, whose N² attention matrix would count 60 GiB at
2048² that the flash / cuDNN kernels never allocate. Cases with a backward run on fake CPU tensors (the autograd
engine needs a real CUDA context for CUDA tensors), where SDPA picks its CPU flash kernel, which saves the same
(output, logsumexp) for backward as the CUDA kernels. Tensor sizes do not depend on the device.

    .venv/bin/python benchmarks/fake_estimate.py                      # all cases, a table
    .venv/bin/python benchmarks/fake_estimate.py --cases fwd-1024 lora+ckpt --json out/estimate.jsonl
"""

from __future__ import annotations

import argparse
import platform
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from bench_json import JsonLines
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from zwsi.model import S3DiT, S3DiTConfig
from zwsi.model.sequence import t2i_sample

GEMM_TFLOPS = 790.0  # DESIGN §7: bf16 GEMM on one H100 (the H200 has the same compute)
CASES = ("fwd-1024", "fwd-2048", "fwdbwd-1024", "lora+ckpt", "lora", "full+ckpt", "full", "generate-batch4")


def build(cfg: S3DiTConfig, device: str, dtype: torch.dtype, lora_rank: int | None = None,
          checkpointing: bool = False) -> torch.nn.Module:
    """The model (with LoRA adapters if asked) as fake tensors on `device`: built for real on the meta device, where
    dtype casts and peft's adapter moves are allowed, then given fake storage with `to_empty` under the active fake
    mode (fake parameters themselves cannot be cast: `Module._apply` must swap them, and their weak references
    forbid it)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily(), torch.device("meta"):
        model = S3DiT(cfg).to(dtype)
        model.enable_gradient_checkpointing(checkpointing)
        if lora_rank:
            from train_step import with_lora

            model = with_lora(model, lora_rank)
    return model.to_empty(device=device)


class LiveBytes(TorchDispatchMode):
    """Peak of the bytes held by live tensor storages: every storage an op returns is counted until it is freed
    (a weak-reference finalizer), plus the storages registered up front (parameters, gradients, optimizer state).
    The fake storages have sizes but no memory, so this is what the caching allocator would have to hold, less its
    rounding and fragmentation."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__()
        self.seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = self.peak = 0
        for t in tensors:
            self.track(t)

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self.seen:
            return
        n = storage.nbytes()
        self.seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def state_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    out = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        out += [v for st in optimizer.state.values() for v in st.values() if isinstance(v, torch.Tensor)]
    return out


def measure(fn: Callable[[], Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
            repeat: int = 1, flops_fn: Callable[[], Any] | None = None) -> tuple[int, dict[str, float]]:
    """The peak bytes of live storages (GiB) over `repeat` calls of `fn`, then the FLOPs of one more call of
    `flops_fn` (default `fn`), counted apart: FlopCounterMode's module tracking keeps tensors alive (a checkpointed
    training step would count 3x its real peak under both); the parts (parameters, gradients, optimizer state)
    as they stand after the memory calls."""
    from torch.utils.flop_counter import FlopCounterMode

    tracker = LiveBytes(*state_tensors(model, optimizer))
    for _ in range(repeat):
        with tracker:
            fn()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    opt = sum(v.numel() * v.element_size() for st in (optimizer.state.values() if optimizer else [])
              for v in st.values() if isinstance(v, torch.Tensor))
    peak = {"Total": tracker.peak / 2**30, "Parameter": params / 2**30, "Gradient": grads / 2**30,
            "Optstate": opt / 2**30}
    counter = FlopCounterMode(display=False)
    with counter:
        (flops_fn or fn)()
    return int(counter.get_total_flops()), peak


def with_backends(model: S3DiT, call: Callable[[], Any]) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(memory run, FLOP run) of a forward on fake CUDA: memory with `varlen` (the flash kernel's fake never holds
    the N² matrix that SDPA's math fallback would), FLOPs with `sdpa` (the counter's varlen formula gives 0 at some
    lengths under fake tensors: 4,224 tokens count 0, 16,512 count right)."""

    def on(backend: str) -> Callable[[], Any]:
        def run() -> Any:
            model.attention_backend = backend
            return call()

        return run

    return on("varlen"), on("sdpa")


def t2i_case(cfg: S3DiTConfig, size: int, train: bool) -> tuple[int, int, dict[str, float]]:
    """model_forward.py's case: one t2i sample (caption 100 tokens), bf16 weights; `train`: + MSE + backward."""
    device = "cpu" if train else "cuda"
    model = build(cfg, device, torch.bfloat16)
    n = size // 8
    x = torch.randn(cfg.in_channels, 1, n, n, device=device, dtype=torch.bfloat16)
    cap = torch.randn(100, cfg.cap_feat_dim, device=device, dtype=torch.bfloat16)
    batch = [t2i_sample(x, 0.5, cap, cfg.patch_size)]
    tokens = (n // cfg.patch_size) ** 2 + 100

    def step() -> None:
        if train:
            out = model(batch)
            sum(((o.float() - 0.5) ** 2).mean() for o in out).backward()
            for p in model.parameters():
                p.grad = None
        else:
            with torch.no_grad():
                model(batch)

    model.train(train)
    if train:
        flops, peak = measure(step, model)
    else:
        fn, flops_fn = with_backends(model, step)
        flops, peak = measure(fn, model, flops_fn=flops_fn)
    return tokens, flops, peak


def train_case(cfg: S3DiTConfig, name: str, rank: int = 32) -> tuple[int, int, dict[str, float]]:
    """train_step.py's phase-D case: 1024² target (64² tokens) + 8 neighbour strips + overview + 128 report tokens,
    bf16 autocast, LoRA (bf16 base, fp32 adapters) or full (fp32 weights), fused AdamW, two steps (the optimizer's
    state exists from the first)."""
    from train_step import context_window, make_step, tokens_of

    lora, ckpt = name.startswith("lora"), name.endswith("+ckpt")
    device = torch.device("cpu")
    model = build(cfg, "cpu", torch.bfloat16 if lora else torch.float32, rank if lora else None, ckpt).train()
    report = torch.randn(128, cfg.cap_feat_dim, dtype=torch.bfloat16)
    batch = [context_window(cfg, 64, report, device, torch.bfloat16)]
    targets = [torch.randn_like(s.target.latents) for s in batch]
    step = make_step(model, lambda: model(batch), targets, torch.bfloat16, device, fused=True)
    flops, peak = measure(step, model, step.optimizer, repeat=2)
    return tokens_of(batch[0], cfg.patch_size), flops, peak


def generate_case(cfg: S3DiTConfig) -> tuple[int, int, dict[str, float]]:
    """One model call of generation: a batch of 4 phase-D windows (1024² targets with context), bf16, no grad."""
    from train_step import context_window, tokens_of

    device = torch.device("cuda")
    model = build(cfg, "cuda", torch.bfloat16).eval()
    report = torch.randn(128, cfg.cap_feat_dim, device=device, dtype=torch.bfloat16)
    batch = [context_window(cfg, 64, report, device, torch.bfloat16) for _ in range(4)]

    def call() -> None:
        with torch.no_grad():
            model(batch)

    fn, flops_fn = with_backends(model, call)
    flops, peak = measure(fn, model, flops_fn=flops_fn)
    return sum(tokens_of(s, cfg.patch_size) for s in batch), flops, peak


def main() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="z-image-turbo")
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--gemm-tflops", type=float, default=GEMM_TFLOPS)
    ap.add_argument("--json", default=None, help="append one JSON line per case to this file")
    args = ap.parse_args()
    cfg = S3DiTConfig.preset(args.preset)
    log = JsonLines(args.json, "fake_estimate")
    print(f"fake-tensor estimates: S3DiT {args.preset}, torch {torch.__version__}, {platform.machine()} CPU; time = "
          f"FLOPs / {args.gemm_tflops:.0f} TFLOP/s\n")
    print("| case | tokens | TFLOP per call/step | peak GiB | of which params / grads / optimizer / activations+temps "
          "| time at GEMM rate ms | tokens/s at that time |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        start = time.perf_counter()
        with FakeTensorMode(allow_non_fake_inputs=True):
            if case.startswith("fwd"):
                tokens, flops, peak = t2i_case(cfg, int(case.split("-")[1]), train=case.startswith("fwdbwd"))
            elif case == "generate-batch4":
                tokens, flops, peak = generate_case(cfg)
            else:
                tokens, flops, peak = train_case(cfg, case)
        ms = flops / (args.gemm_tflops * 1e12) * 1e3
        parts = " / ".join(f"{peak.get(k, 0.0):.1f}" for k in ("Parameter", "Gradient", "Optstate"))
        rest = peak["Total"] - peak["Parameter"] - peak["Gradient"] - peak["Optstate"]
        print(f"| {case} | {tokens:,} | {flops / 1e12:.1f} | {peak.get('Total', 0.0):.1f} | {parts} / {rest:.1f} | "
              f"{ms:.0f} | {tokens / ms * 1e3:,.0f} |", flush=True)
        log.write(kind="row", case=case, preset=args.preset, tokens=tokens, flops=flops, peak_gib=peak,
                  ms_at_gemm_rate=ms, gemm_tflops=args.gemm_tflops, cpu_seconds=time.perf_counter() - start)


if __name__ == "__main__":
    main()
