"""The training loop: flow matching on generation-shaped windows, under accelerate (CPU, one GPU, DDP, FSDP).

One optimiser step: every process builds its share of the global batch (`zwsi.train.samples`), computes Z-Image's
flow-matching loss on the target tokens (`zwsi.flow.flow_loss` through `zwsi.sampling.sequence_denoiser`), and
back-propagates (micro-steps accumulate). Then the health check: a non-finite loss or gradient norm on any process
skips the step on all of them (counted, logged); `health.max_consecutive_nonfinite` in a row stop the run with
`NonFiniteLossError`. Otherwise: gradient clipping, AdamW, the LR schedule, EMA.

Metrics go to ``OUT/metrics.jsonl`` (and TensorBoard when installed), validation loss on the held-out split at
fixed noise levels every `validation.every` steps, sample windows decoded by the VAE to ``OUT/samples/*.png``,
checkpoints to ``OUT/checkpoints/`` (`zwsi.train.state`), and at the end the adapter or model (and its EMA) to
``OUT/final/``.

    result = Trainer(load_train_config("configs/train/tiny-cpu.yaml"), out="runs/tiny", dataset="data/tiny").fit()
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zwsi.train.config import TrainConfig
from zwsi.train.control import apply_control, build_model, save_adapter, trainable_summary
from zwsi.train.dataset import PreparedDataset
from zwsi.train.samples import Example, WindowSampler, local_indices, mix_seed
from zwsi.train.state import (
    EMA,
    checkpoint_name,
    prune_checkpoints,
    read_checkpoint,
    read_transformer_tensors,
    resolve_resume,
    set_rng_state,
    trainable_named,
    write_checkpoint,
)

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        out: the run folder.
        steps: optimiser steps taken (skipped ones included) in total.
        losses: the training loss of each step of this run (NaN/inf where skipped).
        skipped: steps skipped for a non-finite loss or gradient, in total.
        val_losses: step -> validation loss.
        tokens: sequence tokens processed in total.
        trainable: parameter counts (trainable, total, lora).
    """

    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    val_losses: dict[int, float] = field(default_factory=dict)
    tokens: int = 0
    trainable: dict[str, int] = field(default_factory=dict)


class _StateDictModel:
    """A state dict and a config, shaped for `save_pretrained` (which reads `.state_dict()` and `.config`)."""

    def __init__(self, state: dict[str, torch.Tensor], config: Any) -> None:
        self._state, self.config = state, config

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """LR factor per step: linear warm-up over `warmup_steps`, then constant or cosine down to `min_lr_ratio`."""
    o, total = config.optim, config.budget.max_steps

    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "cosine" and total:
            progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


class Trainer:
    """Fine-tunes an S3-DiT on a prepared dataset.

    Args:
        config: the training configuration.
        out: run folder (default: ``config.out``).
        dataset: prepared dataset folder (default: ``config.data.dataset``).
        resume: a checkpoint folder or a run folder (its newest checkpoint) to continue from.
    """

    def __init__(self, config: TrainConfig, *, out: str | Path | None = None, dataset: str | Path | None = None,
                 resume: str | Path | None = None) -> None:
        self.config = config
        out = out or config.out
        if out is None:
            raise ValueError("no run folder: give --out or set `out` in the config")
        self.out = Path(out)
        ds = dataset or config.data.dataset
        if ds is None:
            raise ValueError("no dataset: give --dataset or set data.dataset in the config")
        self.dataset = PreparedDataset(ds)
        self.resume = resolve_resume(resume) if resume is not None else None
        self.step = 0
        self.tokens = 0
        self.skipped = 0
        self.consecutive = 0
        self._hooks: list[Callable[[Trainer], None]] = []

    # ------------------------------------------------------------------ set-up
    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        cfg = self.config
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # on CPU-only machines torchrun's processes then join with gloo
            mixed_precision="bf16" if cfg.precision == "bf16" else "no",
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.distributed.find_unused_parameters)],
        )
        acc = self.accelerator
        self.is_fsdp = acc.distributed_type.name == "FSDP"
        scratch = cfg.control.policy == "full" and not cfg.control.freeze  # a preset trained whole, from scratch
        model = build_model(cfg.model, seed=cfg.seed, initialize=scratch)
        if model.config.cap_feat_dim != self.dataset.feature_dim:
            raise ValueError(
                f"the model's cap_feat_dim {model.config.cap_feat_dim} differs from the dataset's text features "
                f"({self.dataset.feature_dim}, {self.dataset.manifest.text_encoder.get('name')}); set "
                f"model.overrides.cap_feat_dim or prepare the dataset with the model's text encoder"
            )
        plan = self.dataset.plan_config
        if model.config.patch_size != plan.patch_size or model.config.in_channels != plan.latent_channels:
            raise ValueError(f"model patch {model.config.patch_size} / channels {model.config.in_channels} do not fit "
                             f"the dataset's geometry (patch {plan.patch_size}, channels {plan.latent_channels})")
        model = apply_control(model, cfg.control, seed=cfg.seed)
        self.counts = trainable_summary(model)
        if self.counts["trainable"] == 0:
            raise ValueError("nothing to train: control.freeze froze every parameter")
        if acc.is_main_process:
            print(f"zwsi train: policy {cfg.control.policy}, trainable parameters {self.counts['trainable']:,} of "
                  f"{self.counts['total']:,} (LoRA {self.counts['lora']:,}), {acc.num_processes} process(es) on {acc.device}")
        o = cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema: EMA | None = None
        if cfg.ema.enabled:
            if self.is_fsdp:
                raise ValueError("ema.enabled with FSDP is not supported yet; set ema.enabled: false for FSDP runs")
            self.ema = EMA(trainable_named(self.unwrapped), cfg.ema.decay)
        self.sampler = WindowSampler(self.dataset, cfg.data.split, cfg.data, cfg.objective, cfg.seed)
        val_slides = self.dataset.slides(cfg.validation.split)
        self.val_sampler = (
            WindowSampler(self.dataset, cfg.validation.split, cfg.data, cfg.objective, mix_seed(cfg.seed, 7))
            if val_slides and cfg.validation.every else None
        )
        if acc.is_main_process:
            from zwsi.training_plan import TrainingPlan

            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
            m = self.dataset.manifest  # the geometry and schedule the model learns travel with it (export copies)
            TrainingPlan(dict(m.plan), float(m.final_mpp), float(m.coarsest_mpp),
                         dataclasses.asdict(cfg.objective)).write(self.out)
        if self.resume is not None:
            self._load(self.resume)
        self._open_logs()

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def add_step_hook(self, hook: Callable[[Trainer], None]) -> None:
        """Call `hook(trainer)` before each step's forward (tests plant faults with it)."""
        self._hooks.append(hook)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainResult:
        """Train until the budget is spent; returns what the run did."""
        self._setup()
        cfg, acc = self.config, self.accelerator
        result = TrainResult(self.out, self.step, trainable=self.counts)
        bar = None
        if cfg.log.progress and acc.is_main_process and cfg.budget.max_steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.budget.max_steps, initial=self.step, desc="train", unit="step")
        try:
            while not self._budget_spent():
                loss, grad_norm, n_tokens, elapsed = self._train_step()
                result.losses.append(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", skipped=self.skipped)
                self._after_step(loss, grad_norm, n_tokens, elapsed, result)
        finally:
            if bar is not None:
                bar.close()
            self._close_logs()
            if hasattr(self, "_pool"):
                self._pool.shutdown(wait=True, cancel_futures=True)
                del self._pool
        self.save_checkpoint()
        self._export_final()
        result.steps, result.skipped, result.tokens = self.step, self.skipped, self.tokens
        return result

    def _budget_spent(self) -> bool:
        b = self.config.budget
        return (b.max_steps is not None and self.step >= b.max_steps) or (
            b.max_tokens is not None and self.tokens >= b.max_tokens
        )

    def _build_cpu(self, step: int, micro: int) -> list[Example]:
        d, acc = self.config.data, self.accelerator
        idx = local_indices(step, micro, batch_size=d.batch_size, grad_accum=d.grad_accum,
                            rank=acc.process_index, world_size=acc.num_processes)
        return [self.sampler.build(self.sampler.draw(i)) for i in idx]

    def _examples(self, micro: int) -> list[Example]:
        """This process's micro-batch of the current step; the next one is built on a worker thread meanwhile.

        Examples are pure functions of (seed, index), so prefetching changes nothing but the waiting.
        """
        from concurrent.futures import ThreadPoolExecutor

        if not hasattr(self, "_pool"):
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zwsi-data")
            self._pending: dict[tuple[int, int], Any] = {}
        key = (self.step, micro)
        future = self._pending.pop(key, None)
        examples = future.result() if future is not None else self._build_cpu(*key)
        nxt = (self.step, micro + 1) if micro + 1 < self.config.data.grad_accum else (self.step + 1, 0)
        self._pending = {nxt: self._pool.submit(self._build_cpu, *nxt)}
        return [e.to(self.accelerator.device) for e in examples]

    def _loss(self, model: Any, examples: list[Example]) -> torch.Tensor:
        from zwsi.flow import as_velocity, flow_loss
        from zwsi.sampling import sequence_denoiser

        denoise = as_velocity(sequence_denoiser(model, [e.sample for e in examples]), self.config.objective.prediction)
        sigma = torch.tensor([e.sigma for e in examples], dtype=torch.float32, device=examples[0].x0.device)
        with self.accelerator.autocast():
            return flow_loss(denoise, [e.x0 for e in examples], sigma, eps=[e.eps for e in examples])

    def _train_step(self) -> tuple[float, float, int, float]:
        cfg, acc = self.config, self.accelerator
        start = time.perf_counter()
        for hook in self._hooks:
            hook(self)
        self.model.train()
        accum = cfg.data.grad_accum
        losses, tokens = [], 0
        for micro in range(accum):
            examples = self._examples(micro)
            tokens += sum(e.tokens for e in examples)
            sync = micro == accum - 1
            ctx = acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext()
            with ctx:
                loss = self._loss(self.model, examples)
                acc.backward(loss / accum)
            losses.append(loss.detach().float())
        local = torch.stack(losses).mean()
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(params, max_norm)
        grad_norm = torch.as_tensor(grad_norm, dtype=torch.float32, device=local.device)
        mean_loss = acc.reduce(local.clone(), reduction="mean")
        bad = (~torch.isfinite(local) | ~torch.isfinite(grad_norm)).float()
        bad = acc.reduce(bad, reduction="sum")
        total_tokens = int(acc.reduce(torch.tensor(tokens, device=local.device), reduction="sum").item())
        if bad.item() > 0:
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self.consecutive += 1
            if acc.is_main_process:
                logger.warning("step %d: non-finite loss (%s) or gradient norm (%s); step skipped (%d so far)",
                               self.step, float(mean_loss), float(grad_norm), self.skipped)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.consecutive = 0
            if self.ema is not None and self.step >= cfg.ema.start_step:
                self.ema.update(trainable_named(self.unwrapped))
        self.scheduler.step()
        self.step += 1
        self.tokens += total_tokens
        return float(mean_loss), float(grad_norm), total_tokens, time.perf_counter() - start

    def _after_step(self, loss: float, grad_norm: float, n_tokens: int, elapsed: float, result: TrainResult) -> None:
        cfg = self.config
        record = {"step": self.step, "loss": loss, "grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0],
                  "tokens": self.tokens, "step_tokens": n_tokens, "tokens_per_s": n_tokens / max(elapsed, 1e-9),
                  "step_time_s": elapsed, "skipped": self.skipped, "nonfinite": not math.isfinite(loss) or not math.isfinite(grad_norm)}
        if cfg.log.every and (self.step % cfg.log.every == 0 or record["nonfinite"]):
            self._log(record)
        if self.consecutive >= cfg.health.max_consecutive_nonfinite:
            self._close_logs()
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps (up to step {self.step}) had a non-finite loss or gradient; "
                f"{self.skipped} skipped in total. Lower optim.lr, check the data, or raise "
                f"health.max_consecutive_nonfinite (now {cfg.health.max_consecutive_nonfinite})"
            )
        if self.val_sampler is not None and cfg.validation.every and self.step % cfg.validation.every == 0:
            val = self.validate()
            result.val_losses[self.step] = val
            self._log({"step": self.step, "val_loss": val})
            if cfg.validation.sample_windows:
                self.write_samples()
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and not self._budget_spent():
            self.save_checkpoint()

    # ------------------------------------------------------------------ validation and samples
    @torch.no_grad()
    def validate(self) -> float:
        """Mean flow-matching loss on the held-out split at the configured noise levels (deterministic)."""
        if self.val_sampler is None:
            raise ValueError(f"no slides in the validation split {self.config.validation.split!r}")
        v, acc = self.config.validation, self.accelerator
        self.model.eval()
        losses = []
        for b in range(v.batches):
            idx = range(b * v.batch_size, (b + 1) * v.batch_size)
            examples = [self.val_sampler.build(self.val_sampler.draw(i, sigma=v.sigmas[i % len(v.sigmas)], drops=False),
                                               acc.device) for i in idx]
            losses.append(float(self._loss(self.model, examples)))
        return float(np.mean(losses))

    @torch.no_grad()
    def write_samples(self) -> list[Path]:
        """Denoise held-out windows from noise with their real contexts (EMA weights) and write real | sample PNGs."""
        from PIL import Image

        from zwsi.flow import as_velocity
        from zwsi.sampling import sample, sequence_denoiser

        v, acc = self.config.validation, self.accelerator
        if self.val_sampler is None:
            return []
        examples = [self.val_sampler.build(self.val_sampler.draw(10_000 + i, sigma=1.0, drops=False), acc.device)
                    for i in range(v.sample_windows)]
        self.model.eval()
        ema_ctx = self.ema.applied(trainable_named(self.unwrapped)) if self.ema is not None else nullcontext()
        with ema_ctx, acc.autocast():
            denoise = as_velocity(sequence_denoiser(self.model, [e.sample for e in examples]),
                                  self.config.objective.prediction)
            latents = sample(denoise, [e.eps for e in examples], num_steps=v.sample_steps,
                             shift=self.config.objective.shift if v.sample_shift is None else v.sample_shift)
        written: list[Path] = []
        vae = self._vae()
        if not acc.is_main_process or vae is None:
            return written
        folder = self.out / "samples" / checkpoint_name(self.step)
        folder.mkdir(parents=True, exist_ok=True)
        for e, z in zip(examples, latents):
            real = vae.decode(e.x0[:, 0].float().cpu())  # (H, W, 3)
            fake = vae.decode(z[:, 0].float().cpu())  # (H, W, 3)
            d = e.draw
            path = folder / f"{d.slide}_L{d.level}_r{d.row}_c{d.col}_{'ABCD'[d.phase]}.png"
            Image.fromarray(np.concatenate([real, fake], axis=1)).save(path)
            written.append(path)
        return written

    def _vae(self) -> Any:
        if not hasattr(self, "_vae_cache"):
            from zwsi.vae import VAE

            folder = self.dataset.vae_folder()
            self._vae_cache = VAE.from_folder(folder) if folder is not None and folder.is_dir() else None
            if self._vae_cache is None:
                logger.warning("no VAE folder recorded in the dataset; sample windows are not decoded")
        return self._vae_cache

    # ------------------------------------------------------------------ checkpoints
    def _model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        lora = self.config.control.policy == "lora"
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=lora)
        return get_model_state_dict(self.model, options=opts)

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (every process calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        acc, cfg = self.accelerator, self.config
        model_state = self._model_state()
        from zwsi.finite import check_finite

        check_finite(model_state, f"checkpoint at step {self.step}")
        opt_state = get_optimizer_state_dict(self.model, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        unwrapped = self.unwrapped

        def model_files(folder: Path) -> None:
            if cfg.control.policy == "lora":
                from peft import get_peft_model_state_dict

                save_adapter(unwrapped, folder / "adapter", state_dict=get_peft_model_state_dict(unwrapped, state_dict=model_state),
                             base=cfg.model.path or f"preset:{cfg.model.preset}")
            else:
                from zwsi.model.checkpoint import save_pretrained

                save_pretrained(_StateDictModel(model_state, unwrapped.config), folder / "transformer")  # type: ignore[arg-type]

        state = {"step": self.step, "next_sample_index": self.step * self._global_batch(), "tokens": self.tokens,
                 "skipped": self.skipped, "consecutive_nonfinite": self.consecutive, "world_size": acc.num_processes,
                 "policy": cfg.control.policy, "config_sha256": cfg.fingerprint()}
        folder = self.out / "checkpoints" / checkpoint_name(self.step)
        write_checkpoint(folder, is_main=acc.is_main_process, rank=acc.process_index, model_files=model_files,
                         optimizer_state=opt_state, scheduler_state=self.scheduler.state_dict(),
                         ema_state=self.ema.state_dict() if self.ema is not None else None, state=state,
                         barrier=acc.wait_for_everyone)
        if acc.is_main_process:
            prune_checkpoints(self.out / "checkpoints", cfg.checkpoint.keep)
        acc.wait_for_everyone()
        return folder

    def _global_batch(self) -> int:
        d = self.config.data
        return d.batch_size * d.grad_accum * self.accelerator.num_processes

    def _load(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        acc, cfg = self.accelerator, self.config
        ck = read_checkpoint(folder, acc.process_index)
        st = ck["state"]
        if st["policy"] != cfg.control.policy:
            raise ValueError(f"checkpoint {folder} was trained with policy {st['policy']!r}, config says {cfg.control.policy!r}")
        if st["next_sample_index"] != st["step"] * self._global_batch():
            raise ValueError(f"checkpoint {folder} used a global batch of {st['next_sample_index'] // max(st['step'], 1)}, "
                             f"this run {self._global_batch()}: resuming would change the data order")
        if cfg.control.policy == "lora":
            from safetensors.torch import load_file

            raw = load_file(folder / "adapter" / "adapter_model.safetensors")
            weights = {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v for k, v in raw.items()}
            strict = False
        else:
            weights, strict = read_transformer_tensors(folder / "transformer"), True
        trainable = set(trainable_named(self.unwrapped))
        missing = sorted(trainable - set(weights))
        if missing:
            raise ValueError(f"checkpoint {folder} lacks trainable tensors {missing[:5]}")
        set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True, strict=strict))
        set_optimizer_state_dict(self.model, self.optimizer, ck["optimizer"], options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.ema is not None:
            if ck["ema"] is None:
                raise ValueError(f"checkpoint {folder} has no EMA state but ema.enabled is true")
            self.ema.load_state_dict(ck["ema"])
        if ck["rng"] is not None:
            set_rng_state(*ck["rng"])
        self.step, self.tokens = int(st["step"]), int(st["tokens"])
        self.skipped, self.consecutive = int(st["skipped"]), int(st["consecutive_nonfinite"])
        if acc.is_main_process:
            print(f"zwsi train: resumed from {folder} at step {self.step}")

    def _export_final(self) -> None:
        """``OUT/final/``: the adapter (or full transformer), and its EMA as ``ema-adapter`` / ``ema-transformer``."""
        acc, cfg = self.accelerator, self.config
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return
        from zwsi.model.checkpoint import save_pretrained

        model = self.unwrapped
        from zwsi.finite import check_finite

        check_finite(model.named_parameters(), "final model")
        final = self.out / "final"
        variants = [("", nullcontext())]
        if self.ema is not None:
            variants.append(("ema-", self.ema.applied(trainable_named(model))))
        for prefix, ctx in variants:
            with ctx:
                if cfg.control.policy == "lora":
                    save_adapter(model, final / f"{prefix}adapter", base=cfg.model.path or f"preset:{cfg.model.preset}")
                else:
                    save_pretrained(model, final / f"{prefix}transformer")
        acc.wait_for_everyone()

    # ------------------------------------------------------------------ logs
    def _open_logs(self) -> None:
        self._metrics = None
        self._tb = None
        if not self.accelerator.is_main_process:
            return
        path = self.out / "metrics.jsonl"
        if path.is_file():  # keep what the resumed step had logged; drop entries of the interrupted tail
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self._metrics = path.open("a")
        if self.config.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to metrics.jsonl only")

    def _log(self, record: dict[str, Any]) -> None:
        if self._metrics is None:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, record["step"])

    def _close_logs(self) -> None:
        if getattr(self, "_metrics", None) is not None:
            self._metrics.close()
            self._metrics = None
        if getattr(self, "_tb", None) is not None:
            self._tb.close()
            self._tb = None

