"""Train the project's small VAE (a diffusers ``AutoencoderKL``, spatial factor 8) on real tissue crops.

A thin user of the training core (`zwsi.train.core.TrainLoop`: optimiser, LR schedule, EMA, non-finite-loss
policy, checkpoints, resume and metrics are the same as the S3-DiT trainer's). What is the VAE's own:

* data: `zwsi.vae.data.CropSampler` (real slide crops at several µm/px, a held-out strip, augmentations);
* loss: L1 on [-1, 1] pixels + ``loss.ssim`` x (1 - SSIM) (MONAI, a perceptual proxy without LPIPS weights) +
  ``loss.kl`` x KL of the diagonal posterior (`VAELoss`); the posterior sample of step ``k`` is drawn from a
  generator seeded by ``(seed, k)``, so a resumed run equals an uninterrupted one;
* a decoder-only stage: ``model.init`` (a VAE folder) with ``model.train_encoder: false`` keeps the encoder, so
  the latent space and its scaling stay exactly the init's;
* the export (`VAETrainer.export`): ``OUT/vae/`` (config.json with the measured ``scaling_factor`` = 1 / std and
  ``shift_factor`` = mean of the posterior modes of training crops, so ``(z - shift) * scale`` is ~unit variance,
  as Z-Image's VAE config does; weights in ``export.dtype``) and ``OUT/metrics.json`` (held-out PSNR/SSIM per
  µm/px of what ships, latent statistics, timing).

Example::

    cfg = load_vae_train_config("configs/vae/small.yaml")
    result = VAETrainer(cfg, out="runs/vae-small").fit()
    vae = VAE.from_folder(result.export)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zwsi.train.core import METRICS_NAME, MicroLoss, NonFiniteLossError, TrainLoop, TrainResult
from zwsi.vae.config import LossSection, VAETrainConfig
from zwsi.vae.data import CropSampler
from zwsi.vae.evaluate import held_out_metrics, latent_mode
from zwsi.vae.presets import build_autoencoder

__all__ = ["NonFiniteLossError", "STATS_STEP0", "TrainResult", "VAELoss", "VAETrainer"]

LOG = logging.getLogger(__name__)

VAE_DIR = "vae"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
STATS_STEP0 = 10**9  # data draws for the latent statistics: steps no run reaches


class VAELoss(nn.Module):
    """L1 (pixels in [-1, 1]) + w * (1 - SSIM) (MONAI ``SSIMLoss`` on [0, 1]) + kl * mean KL per sample."""

    def __init__(self, loss: LossSection) -> None:
        super().__init__()
        from monai.losses import SSIMLoss

        self.cfg = loss
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0, win_size=loss.ssim_window)

    def forward(self, recon: Tensor, target: Tensor, posterior: Any) -> dict[str, Tensor]:
        l1 = (recon - target).abs().mean()
        ssim = self.ssim((recon.clamp(-1, 1) + 1) / 2, (target + 1) / 2) if self.cfg.ssim else recon.new_zeros(())
        # per pixel, as the other terms; none for a deterministic (TAEF1) encoder
        kl = recon.new_zeros(()) if posterior is None else posterior.kl().mean() / (target.shape[-1] * target.shape[-2])
        total = self.cfg.l1 * l1 + self.cfg.ssim * ssim + self.cfg.kl * kl
        return {"loss": total, "l1": l1, "ssim_loss": ssim, "kl": kl}


class VAETrainer(TrainLoop):
    """Train, checkpoint, validate and export a small ``AutoencoderKL``.

    Args:
        config: the validated run config.
        out: run folder (created; default: the run folder of ``resume``).
        resume: True continues from the newest checkpoint in ``out``; a path names a checkpoint or run folder.
        progress: show a progress bar (default: ``config.log.progress``).

    Raises:
        FileNotFoundError: ``resume`` finds no checkpoint.
    """

    name = "train-vae"
    resume_sections = ("model", "data", "loss", "optim")

    def __init__(self, config: VAETrainConfig, out: str | Path | None = None, *, resume: bool | str | Path = False,
                 progress: bool | None = None) -> None:
        if resume is True and out is None:
            raise ValueError("resume=True continues the run in `out`; give out (or resume=RUN_FOLDER)")
        where = out if resume is True else (resume or None)
        super().__init__(config, out, resume=where, progress=progress)

    # ------------------------------------------------------------------ the core's questions
    @property
    def validation_every(self) -> int:
        return self.config.validation.every

    def build_model(self) -> nn.Module:
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        model: Any = build_autoencoder(cfg.model).train()  # a diffusers AutoencoderKL or AutoencoderTiny
        self.init_scaling: tuple[float, float] | None = None
        if cfg.model.kind == "taef1":
            if not any(p.requires_grad for p in model.parameters()) and cfg.budget.max_steps > 0:
                raise ValueError(f"nothing to train (model.taef1_decoder keeps TAEF1 whole) but budget.max_steps = "
                                 f"{cfg.budget.max_steps}; set it to 0 to measure the latent scaling and export")
            return model  # TAEF1's encoder is loaded and frozen by build_autoencoder
        if cfg.model.init is not None:
            self.init_scaling = self._load_init(model, Path(cfg.model.init))
        else:
            with torch.no_grad():
                # Start with a small posterior noise (std exp(init_logvar / 2)) instead of diffusers' std ~1: with a
                # tiny KL weight the encoder would otherwise spend thousands of Adam steps (~lr per step on this bias)
                # only shrinking the noise the decoder sees.
                model.encoder.conv_out.bias[cfg.model.latent_channels :].fill_(cfg.model.init_logvar)
        if not cfg.model.train_encoder:
            model.encoder.requires_grad_(False)  # the latents a transformer was trained on stay valid
        return model

    def _load_init(self, model: Any, folder: Path) -> tuple[float, float]:
        """Load ``model.init`` into the fresh model; returns its (scaling_factor, shift_factor)."""
        from safetensors.torch import load_file

        config_file = folder / "config.json"
        weights = sorted(folder.glob("*.safetensors"))
        if not config_file.is_file() or not weights:
            raise FileNotFoundError(f"model.init {folder} is not a VAE folder (config.json + *.safetensors)")
        state = {k: v.float() for k, v in load_file(weights[0]).items()}
        own = model.state_dict()
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(own.keys() & state.keys())
                  if state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"model.init {folder} does not fit model (the model section must describe the same "
                             f"AutoencoderKL): missing {missing[:5]}, unexpected {unexpected[:5]}, shapes {shapes[:3]}")
        model.load_state_dict(state)
        config = json.loads(config_file.read_text())
        return float(config["scaling_factor"]), float(config.get("shift_factor") or 0.0)

    def prepare_data(self) -> None:
        cfg = self.config
        self.loss_fn = VAELoss(cfg.loss)
        self.sampler = CropSampler(cfg.data, seed=cfg.seed, val_crops=cfg.validation.crops_per_mpp)
        self.val_sets = self.sampler.validation_sets()

    # ------------------------------------------------------------------ one step
    def micro_loss(self, model: Any, micro: int) -> MicroLoss:
        cfg = self.config
        x, mpp = self.sampler.batch(self.step, cfg.budget.batch_size)  # (B, 3, c, c)
        x = x.to(self.device)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        if cfg.model.kind == "taef1":
            with torch.no_grad():
                z = model.encode(x).latents  # (B, 16, c/8, c/8): TAEF1's latents, a frozen encoder
                if cfg.model.decoder_noise > 0:
                    z = z + cfg.model.decoder_noise * torch.randn(z.shape, generator=gen).to(z.device)
                if cfg.model.distill:  # the teacher's sharp decoding of this latent is the target
                    x = self._teacher().decode(z).sample.clamp(-1, 1)  # (B, 3, c, c)
            recon, posterior = model.decode(z).sample, None  # (B, 3, c, c)
        else:
            posterior = model.encode(x).latent_dist
            recon = model.decode(posterior.sample(gen)).sample  # (B, 3, c, c)
        terms = self.loss_fn(recon, x, posterior)
        logged = {k: float(v.detach()) for k, v in terms.items() if k != "loss"}
        return MicroLoss(terms["loss"], tokens=int(x.shape[0]), terms={**logged, "mpp": mpp})

    def _teacher(self) -> Any:
        """TAEF1 whole, frozen: the decoder a ``distill`` run learns to reproduce."""
        if not hasattr(self, "_teacher_model"):
            from zwsi.taef1 import taef1_autoencoder

            self._teacher_model = taef1_autoencoder(self.config.model.taef1).requires_grad_(False).to(self.device)
        return self._teacher_model

    def run_validation(self) -> dict[str, Any] | None:
        if self.step >= self.config.budget.max_steps:
            return None  # the export measures what ships
        with self.ema_weights():
            metrics = held_out_metrics(self.unwrapped.eval(), self.val_sets)
        LOG.info("step %d held-out %s", self.step, metrics)
        return {"val": metrics}

    # ------------------------------------------------------------------ checkpoints
    def write_model(self, folder: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        (folder / VAE_DIR).mkdir(parents=True)
        unwrapped: Any = self.unwrapped  # a diffusers AutoencoderKL
        unwrapped.save_config(folder / VAE_DIR)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / VAE_DIR / WEIGHTS_NAME))

    def read_model(self, folder: Path) -> tuple[dict[str, Any], bool]:
        from safetensors.torch import load_file

        return load_file(folder / VAE_DIR / WEIGHTS_NAME), True

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def latent_stats(self, model: Any) -> tuple[float, float]:
        """Mean and std of posterior modes over ``export.stats_crops`` training crops (fixed draws)."""
        values = []
        n = self.config.export.stats_crops
        for i in range(0, n, 8):
            x, _ = self.sampler.batch(STATS_STEP0 + i, min(8, n - i))  # draws no training step uses
            values.append(latent_mode(model, x.to(self.device)).flatten())
        z = torch.cat(values).double()
        return float(z.mean()), float(z.std())

    def export(self) -> tuple[Path | None, dict[str, Any]]:
        """``OUT/vae/`` (EMA weights, measured latent scaling, ``export.dtype``) and ``OUT/metrics.json``."""
        cfg = self.config
        with self.ema_weights():
            model: Any = self.unwrapped.eval()
            mean, std = self.latent_stats(model)
            export = build_autoencoder(cfg.model)
            export.load_state_dict(model.state_dict())
        if not cfg.model.train_encoder and self.init_scaling is not None:
            # the encoder is the init's: keep its latent scaling exactly, so latents prepared with it stay valid
            std, mean = 1.0 / self.init_scaling[0], self.init_scaling[1]
        export.register_to_config(scaling_factor=round(1.0 / std, 6), shift_factor=round(mean, 6))
        export = export.to(torch.float16 if cfg.export.dtype == "fp16" else torch.float32)
        vae_dir = self.out / VAE_DIR
        tmp = self.out / f".tmp_{VAE_DIR}"
        shutil.rmtree(tmp, ignore_errors=True)
        export.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(vae_dir, ignore_errors=True)
        os.replace(tmp, vae_dir)
        # measure what ships: the exported (possibly fp16-rounded) weights, run in fp32
        shipped = export.float().eval().to(self.device)
        metrics = {
            "steps": self.step,
            "train_seconds": round(self.elapsed, 1),
            "params": sum(p.numel() for p in shipped.parameters()),
            "weights_bytes": (vae_dir / WEIGHTS_NAME).stat().st_size,
            "storage_dtype": cfg.export.dtype,
            "latent_mean": mean,
            "latent_std": std,
            "scaling_factor": round(1.0 / std, 6),
            "shift_factor": round(mean, 6),
            "held_out_cmu": held_out_metrics(shipped, self.val_sets),
            "final_train_loss": self.last_loss if math.isfinite(self.last_loss) else None,  # none: nothing trained
        }
        (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        with open(self.out / METRICS_NAME, "a") as fh:  # the core's log is closed once the loop ends
            fh.write(json.dumps({"step": self.step, "final": metrics}) + "\n")
        return vae_dir, metrics
