"""S3-DiT forward (and training step) speed: zwsi's S3DiT against diffusers' ZImageTransformer2DModel.

Both models run in the same process with the same weights (ours shares diffusers' tensors), the same inputs and the
same config; the table gives the time of each, the ratio (diffusers / ours, > 1 = we are faster) and the relative
difference of the outputs.

    # CPU, a small config (about a minute on a 2-core machine)
    python benchmarks/model_forward.py
    # GPU, the full 6.155B Turbo config at 1024^2 and 2048^2, forward and one training step (fwd+bwd)
    python benchmarks/model_forward.py --device cuda --preset z-image-turbo --dtype bf16 --train --compile
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import torch

from zwsi.model import S3DiT, S3DiTConfig

# A CPU-sized config with Turbo's head geometry (head_dim 128 = 32 + 48 + 48).
BENCH_SMALL = S3DiTConfig(
    dim=512, n_layers=4, n_refiner_layers=1, n_heads=4, n_kv_heads=4, cap_feat_dim=256, axes_dims=(32, 48, 48)
)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_models(cfg: S3DiTConfig, device: torch.device, dtype: torch.dtype, attention: str | None, seed: int = 0):
    """diffusers' model with random weights, and ours sharing the very same tensors (load_state_dict(assign=True))."""
    from diffusers import ZImageTransformer2DModel

    torch.manual_seed(seed)
    with torch.device(device):
        reference = ZImageTransformer2DModel(**cfg.to_dict()).to(dtype)
    with torch.device("meta"):  # no memory: its parameters become diffusers' tensors below
        ours = S3DiT(cfg, attention_backend=attention)
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
    """Median wall time (ms) of each fn after warm-up, the fns interleaved rep by rep so that a busy machine slows
    both alike; and each fn's last result."""
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


def main(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    cfg = BENCH_SMALL if args.preset == "bench-small" else S3DiTConfig.preset(args.preset)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    reference, ours = build_models(cfg, device, dtype, args.attention)
    if args.checkpointing:
        reference.enable_gradient_checkpointing()
        ours.enable_gradient_checkpointing()
    if args.compile:  # regional compilation: every transformer block compiled once, for both models
        reference.compile_repeated_blocks(fullgraph=False)
        for blocks in (ours.noise_refiner, ours.context_refiner, ours.layers):
            for block in blocks:
                block.compile()
    n_params = sum(p.numel() for p in ours.parameters())
    if device.type == "cuda":
        dev_name = torch.cuda.get_device_name(device)
    else:
        dev_name = f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} thread(s), process CPU time"
    print(f"S3-DiT forward benchmark: {n_params / 1e9:.3f}B params, {args.dtype}, {dev_name}, torch {torch.__version__}")
    print(f"config: dim={cfg.dim} layers={cfg.n_layers}+2x{cfg.n_refiner_layers} heads={cfg.n_heads}; "
          f"batch {args.batch}{' mixed sizes' if args.mixed else ''}, "
          f"caption {args.caption_len} tokens; compile={args.compile} checkpointing={args.checkpointing}")
    header = (f"{'size':>6} {'tokens':>7} {'mode':>6} {'diffusers ms':>13} {'zwsi ms':>9} {'ratio':>6} "
              f"{'zwsi tok/s':>11} {'rel diff':>9}")
    if device.type == "cuda":
        header += f" {'peak GiB':>9}"
    print(header)
    modes = ["fwd"] + (["train"] if args.train else [])
    for size in args.sizes:
        x, t, caps = make_inputs(cfg, size, args.batch, args.caption_len, device, dtype, args.mixed)
        tokens = sum((xi.shape[-1] // 2) ** 2 + c.shape[0] for xi, c in zip(x, caps))
        calls = [lambda: reference(x, t, caps, return_dict=False)[0], lambda: ours.forward_t2i(x, t, caps)]
        for mode in modes:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            if mode == "fwd":
                with torch.no_grad():
                    (d_ms, z_ms), outs = timed_pair(calls, device, args.warmup, args.reps)
            else:
                reference.train(), ours.train()
                steps = [lambda m=m, c=c: train_step(c, list(m.parameters())) for m, c in zip((reference, ours), calls)]
                (d_ms, z_ms), outs = timed_pair(steps, device, args.warmup, args.reps)
                reference.eval(), ours.eval()
            line = (f"{size:>6} {tokens:>7} {mode:>6} {d_ms:>13.1f} {z_ms:>9.1f} {d_ms / z_ms:>6.2f} "
                    f"{tokens / z_ms * 1e3:>11.0f} {rel_diff(outs[1], outs[0]):>9.1e}")
            if device.type == "cuda":  # both models' peak together (they share weights)
                line += f" {torch.cuda.max_memory_allocated(device) / 2**30:>9.1f}"
            print(line, flush=True)


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
    parser.add_argument("--train", action="store_true", help="also time one training step (forward + backward)")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in both models")
    parser.add_argument("--compile", action="store_true", help="torch.compile every transformer block of both models")
    parser.add_argument("--attention", default=None,
                        help="zwsi attention backend (default: env ZWSI_ATTENTION, else per device)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 3 on CUDA")
    parser.add_argument("--reps", type=int, default=None, help="default: 3 on CPU, 10 on CUDA")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; times are process CPU time (default 1)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.preset = args.preset or ("z-image-turbo" if cuda else "bench-small")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    args.sizes = args.sizes or ([1024, 2048] if cuda else [256, 512])
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    args.reps = args.reps or (10 if cuda else 3)
    return args


if __name__ == "__main__":
    main(parse_args())
