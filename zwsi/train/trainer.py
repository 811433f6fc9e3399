"""The S3-DiT trainer: flow matching on generation-shaped windows, a thin user of the training core.

One micro-batch: every process builds its share of the global batch (`zwsi.train.samples`) and computes Z-Image's
flow-matching loss on the target tokens (`zwsi.flow.flow_loss` through `zwsi.sampling.sequence_denoiser`). The
optimiser step, the non-finite-loss policy, the LR schedule, the EMA, checkpoints, resume and the metrics are the
core's (`zwsi.train.core.TrainLoop`).

Beyond the core's run folder: validation loss on the held-out split at fixed noise levels every
`validation.every` steps, sample windows decoded by the VAE to ``OUT/samples/*.png``, and at the end the adapter
or model (and its EMA) in ``OUT/final/``.

    result = Trainer(load_train_config("configs/train/tiny-cpu.yaml"), out="runs/tiny", dataset="data/tiny").fit()
    result = Trainer(config, resume="runs/tiny").fit()        # continue the run from its newest checkpoint
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zwsi.train.config import TrainConfig
from zwsi.train.control import apply_control, build_model, save_adapter
from zwsi.train.core import MicroLoss, NonFiniteLossError, TrainLoop, TrainResult
from zwsi.train.dataset import PreparedDataset
from zwsi.train.samples import Example, WindowSampler, local_indices, mix_seed
from zwsi.train.state import checkpoint_name, read_transformer_tensors

__all__ = ["NonFiniteLossError", "TrainResult", "Trainer"]

logger = logging.getLogger(__name__)


class _StateDictModel:
    """A state dict and a config, shaped for `save_pretrained` (which reads `.state_dict()` and `.config`)."""

    def __init__(self, state: dict[str, torch.Tensor], config: Any) -> None:
        self._state, self.config = state, config

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


class Trainer(TrainLoop):
    """Trains an S3-DiT (from a preset or a checkpoint; full, LoRA or frozen groups) on a prepared dataset.

    Args:
        config: the training configuration.
        out: run folder (default: ``config.out``, else the run folder of ``resume``).
        dataset: prepared dataset folder (default: ``config.data.dataset``).
        resume: a checkpoint folder or a run folder (its newest checkpoint) to continue from.
    """

    name = "train"
    resume_sections = ("control",)

    def __init__(self, config: TrainConfig, *, out: str | Path | None = None, dataset: str | Path | None = None,
                 resume: str | Path | None = None) -> None:
        ds = dataset or config.data.dataset
        if ds is None:
            raise ValueError("no dataset: give --dataset or set data.dataset in the config")
        # the run folder: --out, else the resumed run's, else the config's
        super().__init__(config, out or (None if resume is not None else config.out), resume=resume)
        # the run folder records where it and its data are, so `--resume RUN` needs nothing else
        self.config = dataclasses.replace(config, out=str(self.out),
                                          data=dataclasses.replace(config.data, dataset=str(ds)))
        self.dataset = PreparedDataset(ds)
        self.save_frozen = config.control.policy != "lora"
        self.mixed_precision = "bf16" if config.precision == "bf16" else "no"

    # ------------------------------------------------------------------ the core's questions
    @property
    def grad_accum(self) -> int:
        return self.config.data.grad_accum

    @property
    def max_tokens(self) -> int | None:
        return self.config.budget.max_tokens

    @property
    def validation_every(self) -> int:
        return self.config.validation.every if self.val_sampler is not None else 0

    def accelerator_handlers(self) -> list[Any]:
        from accelerate.utils import DistributedDataParallelKwargs

        return [DistributedDataParallelKwargs(find_unused_parameters=self.config.distributed.find_unused_parameters)]

    def build_model(self) -> nn.Module:
        cfg = self.config
        scratch = cfg.control.policy == "full" and not cfg.control.freeze  # a preset trained whole, from scratch
        model: Any = build_model(cfg.model, seed=cfg.seed, initialize=scratch)
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
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError("nothing to train: control.freeze froze every parameter")
        return model

    def prepare_data(self) -> None:
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            c = self.counts
            print(f"zwsi train: policy {cfg.control.policy}, trainable parameters {c['trainable']:,} of "  # noqa: T201
                  f"{c['total']:,} (LoRA {c['lora']:,}), {acc.num_processes} process(es) on {acc.device}")
        if acc.is_main_process:  # the geometry and schedule the model learns travel with it (`zwsi train export`)
            from zwsi.training_plan import TrainingPlan

            m = self.dataset.manifest
            self.out.mkdir(parents=True, exist_ok=True)
            TrainingPlan(dict(m.plan), float(m.final_mpp), float(m.coarsest_mpp),
                         dataclasses.asdict(cfg.objective)).write(self.out)
        self.sampler = WindowSampler(self.dataset, cfg.data.split, cfg.data, cfg.objective, cfg.seed)
        val_slides = self.dataset.slides(cfg.validation.split)
        self.val_sampler = (
            WindowSampler(self.dataset, cfg.validation.split, cfg.data, cfg.objective, mix_seed(cfg.seed, 7))
            if val_slides and cfg.validation.every else None
        )

    def state_extras(self) -> dict[str, Any]:
        return {"next_sample_index": self.step * self._global_batch(), "policy": self.config.control.policy}

    def check_resume(self, state: dict[str, Any], folder: Path) -> None:
        if state["policy"] != self.config.control.policy:
            raise ValueError(f"checkpoint {folder} was trained with policy {state['policy']!r}, config says "
                             f"{self.config.control.policy!r}")
        if state["next_sample_index"] != state["step"] * self._global_batch():
            raise ValueError(f"checkpoint {folder} used a global batch of "
                             f"{state['next_sample_index'] // max(state['step'], 1)}, this run "
                             f"{self._global_batch()}: resuming would change the data order")

    def _global_batch(self) -> int:
        d = self.config.data
        return d.batch_size * d.grad_accum * self.accelerator.num_processes

    # ------------------------------------------------------------------ one micro-batch
    def micro_loss(self, model: Any, micro: int) -> MicroLoss:
        examples = self._examples(micro)
        return MicroLoss(self._loss(model, examples), tokens=sum(e.tokens for e in examples))

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

    def close(self) -> None:
        if hasattr(self, "_pool"):
            self._pool.shutdown(wait=True, cancel_futures=True)
            del self._pool

    def _loss(self, model: Any, examples: list[Example]) -> torch.Tensor:
        from zwsi.flow import as_velocity, flow_loss
        from zwsi.sampling import sequence_denoiser

        denoise = as_velocity(sequence_denoiser(model, [e.sample for e in examples]), self.config.objective.prediction)
        sigma = torch.tensor([e.sigma for e in examples], dtype=torch.float32, device=examples[0].x0.device)
        with self.accelerator.autocast():
            return flow_loss(denoise, [e.x0 for e in examples], sigma, eps=[e.eps for e in examples])

    # ------------------------------------------------------------------ validation and samples
    def run_validation(self) -> dict[str, Any]:
        record = {"val_loss": self.validate()}
        if self.config.validation.sample_windows:
            self.write_samples()
        return record

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
        shift = self.config.objective.shift if v.sample_shift is None else v.sample_shift  # one schedule
        with self.ema_weights(), acc.autocast():
            denoise = as_velocity(sequence_denoiser(self.model, [e.sample for e in examples]),
                                  self.config.objective.prediction)
            latents = sample(denoise, [e.eps for e in examples], num_steps=v.sample_steps, shift=shift)
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

    # ------------------------------------------------------------------ checkpoints and export
    def write_model(self, folder: Path, state: dict[str, Any]) -> None:
        cfg, unwrapped = self.config, self.unwrapped
        if cfg.control.policy == "lora":
            from peft import get_peft_model_state_dict

            save_adapter(unwrapped, folder / "adapter", state_dict=get_peft_model_state_dict(unwrapped, state_dict=state),
                         base=cfg.model.path or f"preset:{cfg.model.preset}")
        else:
            from zwsi.model.checkpoint import save_pretrained

            save_pretrained(_StateDictModel(state, unwrapped.config), folder / "transformer")  # type: ignore[arg-type]

    def read_model(self, folder: Path) -> tuple[dict[str, Any], bool]:
        if self.config.control.policy == "lora":
            from safetensors.torch import load_file

            raw = load_file(folder / "adapter" / "adapter_model.safetensors")
            return {k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v
                    for k, v in raw.items()}, False
        return read_transformer_tensors(folder / "transformer"), True

    def export(self) -> tuple[Path | None, dict[str, Any]]:
        """``OUT/final/``: the adapter (or full transformer), and its EMA as ``ema-adapter`` / ``ema-transformer``."""
        acc, cfg = self.accelerator, self.config
        final = self.out / "final"
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return final, {}
        from zwsi.finite import check_finite
        from zwsi.model.checkpoint import save_pretrained

        model = self.unwrapped
        check_finite(model.named_parameters(), "final model")
        variants: list[tuple[str, AbstractContextManager[Any]]] = [("", nullcontext())]
        if self.ema is not None:
            variants.append(("ema-", self.ema_weights()))
        for prefix, ctx in variants:
            with ctx:
                if cfg.control.policy == "lora":
                    save_adapter(model, final / f"{prefix}adapter", base=cfg.model.path or f"preset:{cfg.model.preset}")
                else:
                    save_pretrained(model, final / f"{prefix}transformer")
        acc.wait_for_everyone()
        return final, {}
