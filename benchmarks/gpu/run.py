"""The GPU kit, device side: install the carried wheels, probe the machine, then run the steps in order of value,
each under its own timeout, appending every result to ``$OUT/results.jsonl`` as it is measured.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu/run.py               # on the lent H200: the call `prepare` prints
    python benchmarks/gpu/run.py --dry-run --out out/kit           # here: the same steps, tiny sizes, on the CPU
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu/run.py --steps e     # a second call, if device time is left

| step | what                                                                                                     |
|------|----------------------------------------------------------------------------------------------------------|
| -    | install `.whl/*.whl` (--no-index --no-deps, beside the image's torch); probe: versions, imports, GEMM and  |
|      | attention TFLOP/s                                                                                        |
| a    | `pytest -m gpu` on the test files that hold GPU tests (one record per test)                               |
| b    | `benchmarks/model_forward.py --plan kit`: 6B, bf16, 1024² / 2048², eager and compiled, vs diffusers       |
| c    | `benchmarks/train_step.py`: 6B, LoRA and full, with and without checkpointing, 1024² + phase-D context    |
| d    | `benchmarks/generate.py`: random 6B pipeline, an 8,192² slide at 8 steps: s / tissue MP, peak memory      |
| e    | the built-in model's GPU recipe (`configs/default_model/build.sh --device cuda`), weights into $OUT        |

$OUT receives at most 8 files (the device returns no more): results.jsonl, run.log, one log per step a-e and
e_default_model.tar. `--budget` (default 480 s) bounds the whole run: a step gets min(its own timeout, the time
left); a step that times out is killed with its process group, and the next step runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / ".whl"
SITE = Path(tempfile.gettempdir()) / "zwsi-kit-site"
LOG_CAP = 15 * 2**20  # bytes per returned file: the device returns files of at most 16 MiB
BUILD_SCRIPT = REPO / "configs" / "default_model" / "build.sh"
DEFAULT_MODEL_PARTS = ("transformer", "vae", "text_encoder", "scheduler", "zwsi_generate.yaml", "model_index.json",
                       "zwsi_plan.json")
PROBE_MODULES = ("torch", "triton", "diffusers", "transformers", "tokenizers", "accelerate", "peft", "safetensors",
                 "zarr", "numcodecs", "openslide", "tifffile", "imagecodecs", "tiffslide", "monai", "timm", "skimage",
                 "scipy", "numpy", "PIL", "yaml", "tqdm", "rich", "einops", "pytest", "flash_attn",
                 "flash_attn_interface")


@dataclass(frozen=True)
class Context:
    """What every step's command needs."""

    python: str
    out: Path
    results: Path
    tmp: Path
    dry_run: bool

    def bench(self, script: str, *args: str) -> list[str]:
        return [self.python, str(REPO / "benchmarks" / script), *args, "--json", str(self.results)]


@dataclass(frozen=True)
class Step:
    """One step: its log name, its timeout on the device and in the dry run, and its command (None: skipped, with
    the reason `skip` returns)."""

    key: str
    name: str
    timeout_s: float
    dry_timeout_s: float
    command: Callable[[Context], list[str] | None]
    skip: Callable[[Context], str | None] = lambda ctx: None
    min_s: float = 20.0

    @property
    def log_name(self) -> str:
        return f"{self.key}_{self.name}.log"


# ---------------------------------------------------------------------------------------------------------------
#  The steps
# ---------------------------------------------------------------------------------------------------------------
def gpu_test_files() -> list[str]:
    """Test files holding `@pytest.mark.gpu` tests: collecting only them keeps a module that imports something the
    device lacks (the notebooks' nbclient, say) from aborting the whole session."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(encoding="utf-8"))


def pytest_command(ctx: Context) -> list[str]:
    return [ctx.python, "-m", "pytest", "-m", "gpu", "-q", "-rA", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", f"--junitxml={ctx.tmp / 'pytest_gpu.xml'}", *gpu_test_files()]


def model_forward_command(ctx: Context) -> list[str]:
    if ctx.dry_run:
        return ctx.bench("model_forward.py", "--device", "cpu", "--preset", "tiny", "--sizes", "64",
                         "--plan", "kit", "--compile-backend", "eager", "--warmup", "0", "--reps", "1",
                         "--caption-len", "20")
    return ctx.bench("model_forward.py", "--device", "cuda", "--plan", "kit", "--warmup", "2", "--reps", "5")


def train_step_command(ctx: Context) -> list[str]:
    configs = ["--configs", "lora+ckpt", "lora", "full+ckpt", "full"]
    if ctx.dry_run:
        return ctx.bench("train_step.py", "--dim", "64", "--layers", "2", "--cap-dim", "32", "--window-tokens", "4",
                         "--report-tokens", "16", *configs, "--steps", "1", "--warmup", "0", "--rounds", "1",
                         "--threads", "1", "--sequential")
    return ctx.bench("train_step.py", "--device", "cuda", "--preset", "z-image-turbo", *configs, "--steps", "3",
                     "--warmup", "1", "--rounds", "1")


def generate_command(ctx: Context) -> list[str]:
    jpeg = importlib.util.find_spec("imagecodecs") is not None  # JPEG tiles need it; deflate does not
    common = ["--rss-sizes", "--mask-sizes", "--compression", "jpeg" if jpeg else "deflate", "--tmp", str(ctx.tmp)]
    if ctx.dry_run:
        return ctx.bench("generate.py", "--model", "random:tiny", "--device", "cpu", "--threads", "1",
                         "--size", "256x256", "--mpp", "2.0", "--steps", "2", *common)
    return ctx.bench("generate.py", "--model", "random:z-image-turbo", "--device", "cuda", "--size", "8192x8192",
                     "--mpp", "0.5", "--steps", "8", *common)


def default_model_skip(ctx: Context) -> str | None:
    if not BUILD_SCRIPT.is_file():
        return f"{BUILD_SCRIPT.relative_to(REPO)} does not exist"
    if "--device" not in BUILD_SCRIPT.read_text(encoding="utf-8"):
        return f"{BUILD_SCRIPT.relative_to(REPO)} has no --device option yet (the GPU recipe of the built-in model)"
    if ctx.dry_run:
        return "dry run: the built-in model's recipe is not run on the CPU"
    return None


def default_model_command(ctx: Context) -> list[str]:
    return ["bash", str(BUILD_SCRIPT), "--device", "cuda"]


# Device timeouts fit the 8 minutes (plus the probe's ~20 s); the dry run's only catch a hang on a busy machine
# (its steps cost 5-20 s of CPU each, but a 2-core machine shared by several jobs stretched step b to 300 s once).
STEPS = {s.key: s for s in (
    Step("a", "pytest_gpu", 60, 900, pytest_command),
    Step("b", "model_forward", 150, 900, model_forward_command),
    Step("c", "train_step", 80, 900, train_step_command),
    Step("d", "generate", 150, 900, generate_command),
    Step("e", "default_model", 600, 30, default_model_command, default_model_skip, min_s=60),
)}


# ---------------------------------------------------------------------------------------------------------------
#  Running
# ---------------------------------------------------------------------------------------------------------------
class Recorder:
    """results.jsonl (one JSON object per line, flushed at once) and run.log."""

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.results = out / "results.jsonl"
        self.log_path = out / "run.log"

    def write(self, **record: object) -> None:
        record = {"bench": "kit", "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
        with self.results.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        with self.log_path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str]) -> tuple[int | None, float]:
    """Run `cmd` with stdout and stderr into `log`; on timeout kill its whole process group. (rc or None, seconds)"""
    start = time.monotonic()
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc: int | None = proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            rc = None
            for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            fh.write(f"\n*** killed after {timeout:.0f} s (step timeout)\n".encode())
    cap_file(log)
    return rc, time.monotonic() - start


def cap_file(path: Path, cap: int = LOG_CAP) -> None:
    """Keep a log under the device's per-file limit: its first 2 MiB and its last part."""
    size = path.stat().st_size
    if size <= cap:
        return
    head = 2 * 2**20
    with path.open("rb") as fh:
        first = fh.read(head)
        fh.seek(size - (cap - head - 1024))
        last = fh.read()
    path.write_bytes(first + f"\n*** {size - len(first) - len(last)} bytes cut ***\n".encode() + last)


def junit_records(xml: Path) -> list[dict[str, object]]:
    """One record per test case of pytest's JUnit XML: node id, outcome, seconds, message."""
    records = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "") + ("\n" + node.text if node.text and tag != "skipped" else "")
                break
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        records.append({"kind": "test", "test": name, "outcome": outcome, "seconds": float(case.get("time") or 0),
                        "message": message[:3000]})
    return records


def install_wheels(rec: Recorder, python: str) -> dict[str, str]:
    """pip-install the carried wheels into SITE (no index, no dependencies) and return the steps' environment."""
    env = dict(os.environ)
    paths = [str(REPO)]
    wheels = sorted(WHEELS.glob("*.whl"))
    if wheels:
        start = time.monotonic()
        shutil.rmtree(SITE, ignore_errors=True)
        cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
               "--upgrade", "--target", str(SITE), *map(str, wheels)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        ok = done.returncode == 0
        rec.write(kind="install", status="ok" if ok else "failed", wheels=[w.name for w in wheels],
                  seconds=time.monotonic() - start, stderr=done.stderr[-3000:])
        rec.log(f"install: {len(wheels)} wheels {'installed' if ok else 'FAILED'} in {time.monotonic() - start:.1f} s")
        if ok:
            paths.append(str(SITE))
            sys.path.insert(0, str(SITE))  # so this process sees what the steps will (imagecodecs for JPEG)
    else:
        rec.write(kind="install", status="skipped", reason=f"no wheels in {WHEELS}")
        rec.log(f"install: no wheels in {WHEELS}")
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded, here or there
    return env


def run_step(step: Step, ctx: Context, rec: Recorder, env: dict[str, str], deadline: float) -> None:
    left = deadline - time.monotonic()
    budget = step.dry_timeout_s if ctx.dry_run else step.timeout_s
    base = {"kind": "step", "step": step.key, "name": step.name, "log": step.log_name}
    reason = step.skip(ctx)
    if reason is None and left < step.min_s:
        reason = f"not enough time left ({left:.0f} s < {step.min_s:.0f} s)"
    if reason is not None:
        rec.write(**base, status="skipped", reason=reason)
        rec.log(f"step {step.key} {step.name}: skipped: {reason}")
        return
    timeout = min(budget, left)
    cmd = step.command(ctx)
    rec.log(f"step {step.key} {step.name}: start (timeout {timeout:.0f} s)")
    step_env = dict(env)
    if step.key == "e":
        step_env.update(RUN=str(ctx.tmp / "default-model"), ZWSI=f"{ctx.python} -m zwsi", DATA=str(REPO / ".whl" / "data"))
    rc, seconds = run_logged(cmd, ctx.out / step.log_name, timeout, step_env)
    status = "timeout" if rc is None else ("ok" if rc == 0 else "failed")
    if step.key == "a":
        xml = ctx.tmp / "pytest_gpu.xml"
        tests = junit_records(xml) if xml.is_file() else []
        for t in tests:
            rec.write(bench="pytest_gpu", **t)
        if status == "failed" and tests and all(t["outcome"] in ("passed", "skipped") for t in tests):
            status = "ok"  # pytest exits 5 when every selected test was deselected/skipped: not a failure
    if step.key == "e" and status == "ok":
        tar = ctx.out / "e_default_model.tar"
        model = Path(step_env["RUN"]) / "model"  # build.sh --device cuda leaves the package's model as it was
        with tarfile.open(tar, "w") as fh:
            for part in DEFAULT_MODEL_PARTS:
                if (model / part).exists():
                    fh.add(model / part, arcname=f"default_model/{part}")
        if tar.stat().st_size > LOG_CAP:
            tar.unlink()
            status = "ok (weights tar over 15 MiB, not returned)"
    rec.write(**base, status=status, rc=rc, seconds=round(seconds, 1), timeout_s=round(timeout, 1))
    rec.log(f"step {step.key} {step.name}: {status} (rc {rc}) in {seconds:.1f} s")


# ---------------------------------------------------------------------------------------------------------------
#  The probe (a subprocess, so that the orchestrator never holds a CUDA context)
# ---------------------------------------------------------------------------------------------------------------
def probe(results: Path, dry_run: bool) -> None:
    import importlib.metadata
    import platform

    def write(**record: object) -> None:
        with results.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"bench": "probe", **record}, default=str) + "\n")

    modules = {}
    for name in PROBE_MODULES if not dry_run else ("numpy", "flash_attn"):  # dry run: the plumbing, not 20 s of imports
        try:
            module = importlib.import_module(name)
            modules[name] = str(getattr(module, "__version__", "?"))
        except Exception as exc:  # absence is a result here
            modules[name] = f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"
    import torch

    info: dict[str, object] = {"python": platform.python_version(), "torch": torch.__version__,
                               "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                               "cpus": os.cpu_count(), "modules": modules}
    try:
        info["pip_list"] = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    except Exception as exc:
        info["pip_list"] = f"unavailable: {exc}"
    info["torch_features"] = {
        "varlen_attn": importlib.util.find_spec("torch.nn.attention.varlen") is not None,
        "activate_flash_attention_impl": hasattr(importlib.import_module("torch.nn.attention"),
                                                 "activate_flash_attention_impl"),
        "fully_shard": importlib.util.find_spec("torch.distributed.fsdp") is not None
        and hasattr(importlib.import_module("torch.distributed.fsdp"), "fully_shard"),
    }
    device = torch.device("cuda" if torch.cuda.is_available() and not dry_run else "cpu")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
        try:
            info["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    write(kind="environment", **info)

    def rate(fn: Callable[[], object], flops: float, reps: int) -> float:
        for _ in range(2):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return flops * reps / (time.perf_counter() - start) / 1e12

    n = 8192 if device.type == "cuda" else 256
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    write(kind="gemm", device=str(device), n=n, dtype=str(dtype), tflops=rate(lambda: a @ b, 2 * n**3, 10))
    import torch.nn.functional as F

    heads, head_dim, tokens = (30, 128, 16384) if device.type == "cuda" else (2, 32, 256)
    q = torch.randn(1, heads, tokens, head_dim, device=device, dtype=dtype)
    kernels = ["default"] + (["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"] if device.type == "cuda" else [])
    from torch.nn.attention import SDPBackend, sdpa_kernel

    for kernel in kernels:
        try:
            def call() -> object:
                if kernel == "default":
                    return F.scaled_dot_product_attention(q, q, q)
                with sdpa_kernel([getattr(SDPBackend, kernel)]):
                    return F.scaled_dot_product_attention(q, q, q)

            tflops = rate(call, 4 * heads * tokens**2 * head_dim, 5)
            write(kind="attention", kernel=kernel, heads=heads, head_dim=head_dim, tokens=tokens, tflops=tflops)
        except Exception as exc:
            write(kind="attention", kernel=kernel, error=f"{type(exc).__name__}: {str(exc)[:300]}")


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU; no wheel install")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "out" / "gpu-kit"),
                    help="results folder (default: $OUT, else out/gpu-kit)")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS), help="steps to run, in order")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for the whole run (default 480 = 8 min; dry run 3600)")
    ap.add_argument("--no-install", action="store_true", help="use the environment as it is")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        probe(Path(args.json), args.dry_run)
        return 0
    if args.budget is None:
        args.budget = 3600.0 if args.dry_run else 480.0
    start = time.monotonic()
    deadline = start + args.budget
    out = Path(args.out)
    rec = Recorder(out)
    tmp = Path(tempfile.mkdtemp(prefix="zwsi-kit-"))
    ctx = Context(python=sys.executable, out=out, results=rec.results, tmp=tmp, dry_run=args.dry_run)
    rec.write(kind="start", dry_run=args.dry_run, steps=args.steps, budget_s=args.budget, python=sys.executable,
              repo=str(REPO))
    rec.log(f"GPU kit {'dry run' if args.dry_run else 'run'}: steps {' '.join(args.steps)}, budget {args.budget:.0f} s, "
            f"results {rec.results}")
    if args.dry_run or args.no_install:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env.setdefault("HF_HUB_OFFLINE", "1")
        if args.dry_run:
            env.setdefault("OMP_NUM_THREADS", "1")
    else:
        env = install_wheels(rec, sys.executable)
    rc, seconds = run_logged([sys.executable, __file__, "--probe", "--json", str(rec.results)]
                             + (["--dry-run"] if args.dry_run else []), out / "run.log", 90, env)
    rec.log(f"probe: rc {rc} in {seconds:.1f} s")
    for key in args.steps:
        run_step(STEPS[key], ctx, rec, env, deadline)
    shutil.rmtree(tmp, ignore_errors=True)
    rec.write(kind="end", seconds=round(time.monotonic() - start, 1))
    rec.log(f"done in {time.monotonic() - start:.0f} s; {len(list(out.iterdir()))} files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
