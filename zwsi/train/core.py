"""The training core: one loop, optimiser, LR schedule, EMA, non-finite-loss policy, checkpoints, resume and logs.

Both trainers of the project are thin users of `TrainLoop`: `zwsi.train.trainer.Trainer` (the S3-DiT, flow
matching on generation-shaped windows) and `zwsi.vae.train.VAETrainer` (the small AutoencoderKL). A trainer says
what its model is (`build_model`), what a micro-batch's loss is (`micro_loss`), how its model is written into and
read from a checkpoint (`write_model`, `read_model`), what it validates (`run_validation`) and what it exports at the
end (`export`); the core does the rest, the same way for both, under accelerate (CPU, one GPU, DDP, FSDP):

    step k:  step hooks -> every micro-batch: loss, backward (no gradient sync but on the last) -> clip the global
             gradient norm -> a non-finite loss or norm on any process skips the step on all of them (counted,
             logged; `health.max_consecutive_nonfinite` in a row stop the run with `NonFiniteLossError`) -> else
             AdamW step and EMA update -> LR schedule step (`lr_factor`) -> metrics -> validation every
             `validation_every` steps -> a checkpoint every `checkpoint.every` steps (and at the end).

Run folder::

    OUT/config.json          the resolved config of the run
    OUT/metrics.jsonl        one JSON line per logged step / validation (and TensorBoard when enabled)
    OUT/checkpoints/step-0000100/   `zwsi.train.state` (model, optimizer, scheduler, EMA, RNG, state.json)
    OUT/...                  the trainer's export (the S3-DiT's final/, the VAE's vae/)

Resume: ``resume=DIR`` with DIR a checkpoint folder or a run folder (its newest checkpoint); the run folder is
DIR's unless ``out`` says otherwise, and `saved_config` gives the config the checkpoint was trained with. A resumed
run equals an uninterrupted one step for step (the RNG, optimizer, scheduler and EMA state are restored, and every
data draw is a function of (seed, step)). ``fit(stop_at=k)`` stops after step k as an interrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zwsi.train.config import OptimConfig
from zwsi.train.state import (
    CHECKPOINTS_DIR,
    EMA,
    STATE_NAME,
    checkpoint_name,
    prune_checkpoints,
    read_checkpoint,
    resolve_resume,
    run_folder_of,
    set_rng_state,
    trainable_named,
    write_checkpoint,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.jsonl"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class MicroLoss:
    """One micro-batch's loss on this process and what the trainer logs beside it.

    Attributes:
        loss: the scalar loss (the core back-propagates ``loss / grad_accum``).
        tokens: what the micro-batch held in the budget's unit (sequence tokens for the S3-DiT, crops for the
            VAE), summed over processes.
        terms: extra numbers of this step for the metrics (loss terms, the batch's µm/px, ...).
    """

    loss: torch.Tensor
    tokens: int = 0
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        out: the run folder.
        steps: optimiser steps taken in total (skipped ones included).
        losses: the training loss of each step of this call (NaN/inf where skipped).
        skipped: steps skipped for a non-finite loss or gradient, in total.
        validation: step -> what the trainer's validation measured then (e.g. ``{"val_loss": 0.4}``).
        tokens: tokens processed in total.
        trainable: parameter counts (trainable, total, lora).
        export: what the trainer exported once the budget was spent (None when stopped early).
        metrics: the trainer's figures of the export.
    """

    out: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    skipped: int = 0
    validation: dict[int, dict[str, Any]] = field(default_factory=dict)
    tokens: int = 0
    trainable: dict[str, int] = field(default_factory=dict)
    export: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def lr_factor(step: int, optim: OptimConfig, max_steps: int | None) -> float:
    """LR factor of step ``step``: linear warm-up over ``warmup_steps``, then constant, or cosine down to
    ``min_lr_ratio`` at ``max_steps``."""
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "cosine" and max_steps:
        progress = min(1.0, (step - optim.warmup_steps) / max(1, max_steps - optim.warmup_steps))
        return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0


def trainable_summary(model: nn.Module) -> dict[str, int]:
    """Parameter counts: trainable, total, and trainable LoRA parameters."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and "lora_" in n)
    return {"trainable": trainable, "total": total, "lora": lora}


def saved_config(resume: str | Path) -> dict[str, Any]:
    """The config a checkpoint (or a run folder's newest checkpoint) was trained with, as a mapping.

    Raises:
        FileNotFoundError: no checkpoint there, or neither its state nor its run folder records the config.
    """
    ckpt = resolve_resume(resume)
    state = json.loads((ckpt / STATE_NAME).read_text())
    if isinstance(state.get("config"), dict):
        return dict(state["config"])
    run_config = run_folder_of(ckpt) / CONFIG_NAME
    if run_config.is_file():
        return dict(json.loads(run_config.read_text()))
    raise FileNotFoundError(f"--resume {resume}: {ckpt} records no config and {run_config} is missing; give --config")


class TrainLoop:
    """The training core (see the module docstring); subclasses fill in the trainer-specific methods.

    Args:
        config: the run config; the core reads its ``optim`` (`OptimConfig`), ``ema``, ``budget.max_steps``,
            ``checkpoint``, ``health`` and ``log`` sections.
        out: the run folder (default: ``resume``'s run folder).
        resume: a checkpoint folder, or a run folder (its newest checkpoint), to continue from.
        progress: show a progress bar (default: ``config.log.progress``).

    Raises:
        ValueError: no run folder.
        FileNotFoundError: ``resume`` holds no checkpoint.
    """

    name = "train"
    """Names the progress bar and the messages (``zwsi <name>: ...``)."""
    resume_sections: tuple[str, ...] = ()
    """Config sections a checkpoint must have been trained with to be resumed."""
    save_frozen = True
    """Whether checkpoints hold frozen parameters too (False: only what trains, e.g. a LoRA adapter)."""
    mixed_precision = "no"

    def __init__(self, config: Any, out: str | Path | None = None, *, resume: str | Path | None = None,
                 progress: bool | None = None) -> None:
        self.config = config
        self.resume = resolve_resume(resume) if resume is not None else None
        if out is None and self.resume is not None:
            out = run_folder_of(self.resume)
        if out is None:
            raise ValueError("no run folder: give --out (or --resume a run folder) or set `out` in the config")
        self.out = Path(out)
        self.progress = bool(config.log.progress if progress is None else progress)
        self.step = self.tokens = self.skipped = self.consecutive = 0
        self.elapsed = 0.0
        self.last_loss = float("nan")
        self._hooks: list[Callable[[Any], None]] = []
        self._metrics: Any = None
        self._tb: Any = None

    # ------------------------------------------------------------------ what a trainer provides
    def build_model(self) -> nn.Module:
        """The model to train, with ``requires_grad`` set on what trains (before accelerate prepares it)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Set up the data (samplers, validation sets) once the model is prepared."""

    def micro_loss(self, model: Any, micro: int) -> MicroLoss:
        """This process's loss on micro-batch ``micro`` of step ``self.step``."""
        raise NotImplementedError

    def write_model(self, folder: Path, state: dict[str, Any]) -> None:
        """Write the model's ``state`` (gathered, on the CPU) into a checkpoint folder (main process)."""
        raise NotImplementedError

    def read_model(self, folder: Path) -> tuple[dict[str, Any], bool]:
        """The model tensors of a checkpoint folder, and whether they must match the model's keys strictly."""
        raise NotImplementedError

    def run_validation(self) -> dict[str, Any] | None:
        """Validate now (every `validation_every` steps); the returned record is logged and kept."""
        return None

    def export(self) -> tuple[Path | None, dict[str, Any]]:
        """Export the trained model once the budget is spent: (what was written, its figures)."""
        return None, {}

    def check_resume(self, state: dict[str, Any], folder: Path) -> None:
        """Refuse a checkpoint whose state does not fit this run (beyond `resume_sections`)."""

    def state_extras(self) -> dict[str, Any]:
        """Entries of ``state.json`` beyond the core's."""
        return {}

    def accelerator_handlers(self) -> list[Any]:
        return []

    def close(self) -> None:
        """Release what the trainer holds (worker threads) when the loop ends or fails."""

    @property
    def grad_accum(self) -> int:
        return 1

    @property
    def max_steps(self) -> int | None:
        return self.config.budget.max_steps

    @property
    def max_tokens(self) -> int | None:
        return None

    @property
    def validation_every(self) -> int:
        return 0

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Build the model, optimiser, schedule and EMA under accelerate, the data, and resume if asked."""
        from accelerate import Accelerator

        cfg, o = self.config, self.config.optim
        self.accelerator = Accelerator(
            cpu=not torch.cuda.is_available(),  # on CPU-only machines torchrun's processes then join with gloo
            mixed_precision=self.mixed_precision, kwargs_handlers=self.accelerator_handlers(),
        )
        acc = self.accelerator
        model = self.build_model()
        self.counts = trainable_summary(model)
        # a run that only measures and exports (a VAE kept whole, budget.max_steps 0) has nothing to optimise
        params = [p for p in model.parameters() if p.requires_grad] or [nn.Parameter(torch.zeros(()))]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, o, self.max_steps))
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema: EMA | None = None
        if cfg.ema.enabled:
            if acc.distributed_type.name == "FSDP":
                raise ValueError("ema.enabled with FSDP is not supported yet; set ema.enabled: false for FSDP runs")
            self.ema = EMA(trainable_named(self.unwrapped), cfg.ema.decay, warmup=cfg.ema.warmup)
        self.prepare_data()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
        if self.resume is not None:
            self._load(self.resume)
        self._open_logs()

    @property
    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def ema_weights(self) -> AbstractContextManager[None]:
        """A block in which the model holds its EMA weights (the trained ones without an EMA)."""
        return self.ema.applied(trainable_named(self.unwrapped)) if self.ema is not None else nullcontext()

    def add_step_hook(self, hook: Callable[[Any], None]) -> None:
        """Call ``hook(trainer)`` before each step's forward (tests plant faults with it)."""
        self._hooks.append(hook)

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until the budget is spent (or step ``stop_at``), checkpoint, and export if the budget is spent."""
        self.setup()
        result = TrainResult(self.out, self.step, trainable=self.counts)
        bar = None
        if self.progress and self.accelerator.is_main_process and self.max_steps:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.max_steps, initial=min(self.step, self.max_steps), desc=self.name, unit="step",
                       dynamic_ncols=True)
        try:
            while not self._loop_ends(stop_at):
                loss, record = self._train_step()
                result.losses.append(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", skipped=self.skipped)
                self._after_step(record, result, stop_at)
        finally:
            if bar is not None:
                bar.close()
            self._close_logs()
            self.close()
        self.save_checkpoint()
        result.steps, result.skipped, result.tokens = self.step, self.skipped, self.tokens
        if self.budget_spent():
            result.export, result.metrics = self.export()
        return result

    def budget_spent(self) -> bool:
        return (self.max_steps is not None and self.step >= self.max_steps) or (
            self.max_tokens is not None and self.tokens >= self.max_tokens
        )

    def _loop_ends(self, stop_at: int | None) -> bool:
        return self.budget_spent() or (stop_at is not None and self.step >= stop_at)

    def _train_step(self) -> tuple[float, dict[str, Any]]:
        """One optimiser step (see the module docstring); returns its loss and metrics record."""
        acc, cfg = self.accelerator, self.config
        start = time.perf_counter()
        for hook in self._hooks:
            hook(self)
        self.model.train()
        losses, tokens, terms = [], 0, {}
        for micro in range(self.grad_accum):
            sync = micro == self.grad_accum - 1
            ctx = acc.no_sync(self.model) if not sync and acc.num_processes > 1 else nullcontext()
            with ctx:
                part = self.micro_loss(self.model, micro)
                acc.backward(part.loss / self.grad_accum)
            losses.append(part.loss.detach().float())
            tokens += part.tokens
            terms.update(part.terms)
        local = torch.stack(losses).mean()
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.as_tensor(acc.clip_grad_norm_(params, max_norm), dtype=torch.float32, device=local.device)
        mean_loss = acc.reduce(local.clone(), reduction="mean")
        bad = acc.reduce((~torch.isfinite(local) | ~torch.isfinite(grad_norm)).float(), reduction="sum")
        total_tokens = int(acc.reduce(torch.tensor(tokens, device=local.device), reduction="sum").item())
        lr = self.scheduler.get_last_lr()[0]  # the rate this step used
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
                self.ema.update(trainable_named(self.unwrapped), self.step)
        self.scheduler.step()
        self.step += 1
        self.tokens += total_tokens
        elapsed = time.perf_counter() - start
        self.elapsed += elapsed
        loss, norm = float(mean_loss), float(grad_norm)
        if math.isfinite(loss):
            self.last_loss = loss
        record = {"step": self.step, "loss": loss, "grad_norm": norm, "lr": lr, **terms, "tokens": self.tokens,
                  "step_tokens": total_tokens, "tokens_per_s": total_tokens / max(elapsed, 1e-9),
                  "step_time_s": elapsed, "elapsed_s": round(self.elapsed, 2), "skipped": self.skipped,
                  "nonfinite": not math.isfinite(loss) or not math.isfinite(norm)}
        return loss, record

    def _after_step(self, record: dict[str, Any], result: TrainResult, stop_at: int | None) -> None:
        cfg = self.config
        if cfg.log.every and (self.step % cfg.log.every == 0 or record["nonfinite"]):
            self._log(record)
        limit = cfg.health.max_consecutive_nonfinite
        if self.consecutive >= limit:
            self._close_logs()
            raise NonFiniteLossError(
                f"{self.consecutive} consecutive steps (up to step {self.step}) had a non-finite loss or gradient; "
                f"{self.skipped} skipped in total. Lower optim.lr (now {cfg.optim.lr}), check the data, or raise "
                f"health.max_consecutive_nonfinite (now {limit})"
            )
        if self.validation_every and self.step % self.validation_every == 0:
            measured = self.run_validation()
            if measured is not None:
                result.validation[self.step] = measured
                self._log({"step": self.step, **measured})
        every = cfg.checkpoint.every
        if every and self.step % every == 0 and not self._loop_ends(stop_at):
            self.save_checkpoint()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (every process calls it), keeping the newest ``checkpoint.keep``."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        acc, cfg = self.accelerator, self.config
        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=not self.save_frozen)
        model_state = get_model_state_dict(self.model, options=options)
        from zwsi.finite import check_finite

        check_finite(model_state, f"checkpoint at step {self.step}")  # a diverged run never overwrites a good one
        # nothing trainable (a codec kept as it is): the optimizer holds only a placeholder, and no state
        opt_state = get_optimizer_state_dict(self.model, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True)) if self.counts["trainable"] else {"state": {}, "param_groups": []}
        config = cfg.to_dict()
        state = {"step": self.step, "tokens": self.tokens, "skipped": self.skipped,
                 "consecutive_nonfinite": self.consecutive, "world_size": acc.num_processes,
                 "elapsed_s": self.elapsed, "last_loss": self.last_loss, "config": config,
                 "config_sha256": hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest(),
                 **self.state_extras()}
        folder = self.out / CHECKPOINTS_DIR / checkpoint_name(self.step)
        write_checkpoint(folder, is_main=acc.is_main_process, rank=acc.process_index,
                         model_files=lambda tmp: self.write_model(tmp, model_state), optimizer_state=opt_state,
                         scheduler_state=self.scheduler.state_dict(),
                         ema_state=self.ema.state_dict() if self.ema is not None else None, state=state,
                         barrier=acc.wait_for_everyone)
        if acc.is_main_process:
            prune_checkpoints(self.out / CHECKPOINTS_DIR, cfg.checkpoint.keep)
        acc.wait_for_everyone()
        return folder

    def _load(self, folder: Path) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        acc = self.accelerator
        ck = read_checkpoint(folder, acc.process_index)
        st = ck["state"]
        saved = st.get("config")  # absent in checkpoints of earlier versions
        if saved is not None:
            mine = json.loads(json.dumps(self.config.to_dict()))
            for section in self.resume_sections:
                if saved.get(section) != mine[section]:
                    raise ValueError(f"cannot resume from {folder}: config section {section!r} differs from the "
                                     f"checkpoint's ({saved.get(section)} vs {mine[section]})")
        self.check_resume(st, folder)
        weights, strict = self.read_model(folder)
        missing = sorted(set(trainable_named(self.unwrapped)) - set(weights))
        if missing:
            raise ValueError(f"checkpoint {folder} lacks trainable tensors {missing[:5]}")
        set_model_state_dict(self.model, weights, options=StateDictOptions(full_state_dict=True, strict=strict))
        if ck["optimizer"]["param_groups"]:
            set_optimizer_state_dict(self.model, self.optimizer, ck["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        self.scheduler.load_state_dict(ck["scheduler"])
        if self.ema is not None:
            if ck["ema"] is None:
                raise ValueError(f"checkpoint {folder} has no EMA state but ema.enabled is true")
            self.ema.load_state_dict(ck["ema"])
        if ck["rng"] is not None:
            set_rng_state(*ck["rng"])
        self.step, self.tokens = int(st["step"]), int(st["tokens"])
        self.skipped, self.consecutive = int(st["skipped"]), int(st["consecutive_nonfinite"])
        self.elapsed = float(st.get("elapsed_s", 0.0))
        self.last_loss = float(st.get("last_loss", float("nan")))
        if acc.is_main_process:
            print(f"zwsi {self.name}: resumed from {folder} at step {self.step}")  # noqa: T201 - the CLI's voice

    # ------------------------------------------------------------------ logs
    def _open_logs(self) -> None:
        self._metrics = None
        self._tb = None
        if not self.accelerator.is_main_process:
            return
        path = self.out / METRICS_NAME
        if path.is_file():  # keep what the resumed step had logged; drop entries of the interrupted tail
            kept = [ln for ln in path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
            path.write_text("".join(ln + "\n" for ln in kept))
        self._metrics = path.open("a")
        if self.config.log.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                logger.info("tensorboard is not installed; metrics go to %s only", METRICS_NAME)

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
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

