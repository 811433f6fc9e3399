"""VAE training on real CMU-1-Small-Region crops: loss falls, resume == uninterrupted, export loads, config errors.

The slide is ../shared/data's or, in a fresh clone, the package's bundled copy (tests.conftest.shared_file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, shared_file
from tests.zwsi.vae.vae_testing import tiny_config
from zwsi.train.core import NonFiniteLossError
from zwsi.vae.config import load_vae_train_config, vae_train_config_from_dict
from zwsi.vae.data import CropSampler, dihedral, stain_jitter
from zwsi.vae.train import STATS_STEP0, VAELoss, VAETrainer

SLIDE = "wsi/CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    slide = shared_file(SLIDE)
    out = tmp_path_factory.mktemp("vae_run")
    cfg = tiny_config(slide)
    result = VAETrainer(cfg, out, progress=False).fit()
    return cfg, result


def test_loss_falls_over_50_steps_on_real_crops(trained, tmp_path: Path) -> None:
    from zwsi.vae.evaluate import held_out_metrics

    cfg, result = trained
    losses = np.asarray(result.losses)
    assert len(losses) == 50 and np.isfinite(losses).all()
    first, last = losses[:10].mean(), losses[-10:].mean()
    assert last < 0.9 * first, (first, last)
    # held-out crops (never trained on) reconstruct better than with the initial weights, at every µm/px
    untrained = VAETrainer(cfg, tmp_path, progress=False)
    untrained.setup()
    before = held_out_metrics(untrained.model.eval(), untrained.val_sets)
    after = result.metrics["held_out_cmu"]
    assert all(after[k]["psnr"] > before[k]["psnr"] + 1.0 for k in after), (before, after)


def test_export_loads_with_vae_from_folder_and_latents_are_unit_scaled(trained) -> None:
    from zwsi.vae import VAE

    cfg, result = trained
    vae = VAE.from_folder(result.out)  # the run folder holds vae/
    assert vae.latent_channels == 4 and vae.spatial_factor == 8
    assert vae.scaling_factor == pytest.approx(result.metrics["scaling_factor"])
    assert vae.shift_factor == pytest.approx(result.metrics["shift_factor"])
    # the stored weights are fp16 (export.dtype), the loader gives fp32
    from safetensors import safe_open

    with safe_open(str(result.export / "diffusion_pytorch_model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float16}
    # the same crops the statistics were measured on encode to mean ~0, std ~1 through the public codec
    sampler = CropSampler(cfg.data, seed=cfg.seed)
    x = torch.cat([sampler.batch(STATS_STEP0 + i, 8)[0] for i in (0, 8)])  # (16, 3, 32, 32)
    z = vae.encode(x)  # (16, 4, 4, 4)
    assert z.shape == (16, 4, 4, 4)
    assert abs(float(z.mean())) < 0.02 and float(z.std()) == pytest.approx(1.0, abs=0.02)
    rgb = vae.decode(z[:1])
    assert rgb.shape == (1, 32, 32, 3) and rgb.dtype == np.uint8
    held = result.metrics["held_out_cmu"]
    assert set(held) == {"0.5", "2.0", "8.0"} and all(np.isfinite(v["psnr"]) for v in held.values())


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    slide = shared_file(SLIDE)
    cfg = tiny_config(slide, budget={"max_steps": 6}, checkpoint={"every": 2})
    full = VAETrainer(cfg, tmp_path / "full", progress=False).fit()
    cut = VAETrainer(cfg, tmp_path / "cut", progress=False).fit(stop_at=3)
    assert cut.steps == 3 and cut.export is None and not (tmp_path / "cut" / "vae").exists()
    resumed = VAETrainer(cfg, tmp_path / "cut", resume=True, progress=False).fit()
    assert resumed.steps == full.steps == 6
    assert cut.losses + resumed.losses == full.losses  # bit for bit on CPU
    weights = "vae/diffusion_pytorch_model.safetensors"
    a = load_file(full.out / "checkpoints" / "step-0000006" / weights)
    b = load_file(resumed.out / "checkpoints" / "step-0000006" / weights)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-0000004", "step-0000006"]
    a, b = (load_file(r.export / "diffusion_pytorch_model.safetensors") for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_checkpoint_and_changed_config_raise(tmp_path: Path) -> None:
    slide = shared_file(SLIDE)
    cfg = tiny_config(slide, budget={"max_steps": 2})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        VAETrainer(cfg, tmp_path, resume=True, progress=False).fit()
    VAETrainer(cfg, tmp_path, progress=False).fit(stop_at=1)
    other = tiny_config(slide, budget={"max_steps": 2}, model={"latent_channels": 8})
    with pytest.raises(ValueError, match="config section 'model' differs"):
        VAETrainer(other, tmp_path, resume=True, progress=False).fit()


def test_non_finite_steps_are_skipped_then_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    slide = shared_file(SLIDE)
    cfg = tiny_config(slide, budget={"max_steps": 20})  # a NaN loss weight is refused by the config itself
    forward = VAELoss.forward

    def nan_loss(self: VAELoss, *args: Any) -> dict[str, torch.Tensor]:
        terms = forward(self, *args)
        return {**terms, "loss": terms["loss"] * float("nan")}  # a diverged step: the loss and every gradient NaN

    monkeypatch.setattr(VAELoss, "forward", nan_loss)
    trainer = VAETrainer(cfg, tmp_path, progress=False)
    with pytest.raises(NonFiniteLossError, match=r"5 consecutive steps \(up to step 5\) had a non-finite loss"):
        trainer.fit()
    fresh = VAETrainer(cfg, tmp_path / "x", progress=False)
    fresh.setup()
    # skipped steps leave the weights as initialised (same seed)
    assert all(torch.equal(p, q) for p, q in zip(trainer.model.parameters(), fresh.model.parameters()))


def test_shipped_config_validates_and_unknown_keys_error(tmp_path: Path) -> None:
    cfg = load_vae_train_config(REPO_ROOT / "configs" / "vae" / "small.yaml")
    assert len(cfg.model.block_out_channels) == 4 and cfg.data.mpps == (0.5, 2.0, 8.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  latent_chanels: 8\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['model.latent_chanels'\]"):
        load_vae_train_config(bad)
    with pytest.raises(ValueError, match="data.crop must be a multiple of 8"):
        vae_train_config_from_dict({"data": {"crop": 30}})
    with pytest.raises(ValueError, match="export.dtype must be 'fp16' or 'fp32', got 'bf8'"):
        vae_train_config_from_dict({"export": {"dtype": "bf8"}})


def test_crops_hold_out_the_validation_strip_and_augmentations_are_exact() -> None:
    slide = shared_file(SLIDE)
    cfg = tiny_config(slide)
    sampler = CropSampler(cfg.data, seed=0)
    for s in sampler.scales:
        left = int(np.floor(cfg.data.holdout[0] * 2220 / (s.mpp / 0.499)))
        assert (s.tissue[:, 1] + s.crop <= left).all() and (s.glass[:, 1] + s.crop <= left).all()
        assert (s.val[:, 1] >= left).all()
    x1, mpp1 = sampler.batch(7, 4)
    x2, mpp2 = sampler.batch(7, 4)
    assert mpp1 == mpp2 and torch.equal(x1, x2)  # a step's batch is a function of (seed, step)
    tile = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert len({dihedral(tile, k).tobytes() + bytes(dihedral(tile, k).shape) for k in range(8)}) == 8
    white = np.full((4, 4, 3), 255, np.uint8)
    rng = np.random.default_rng(0)
    assert (stain_jitter(white, rng, 0.2) == 255).all()


def test_cli_train_vae_errors_and_eval(trained, capsys: pytest.CaptureFixture[str]) -> None:
    from zwsi.cli import main

    _, result = trained
    assert main(["train-vae", "--out", "x"]) == 2
    assert "--config and --out are required" in capsys.readouterr().err
    tile = shared_file("tiles/mopadi/TCGA-3X-AAVA-01Z-00-DX1__0_0_0_506.jpg")
    assert main(["train-vae", "eval", str(result.export), str(tile), "--downsample", "1", "4"]) == 0
    out = capsys.readouterr().out
    assert "TCGA-3X-AAVA-01Z-00-DX1__0_0_0_506.jpg" in out and out.count("mean") == 2
    assert main(["train-vae", "eval", str(result.export), "no/such.png"]) == 2
    assert "image no/such.png does not exist" in capsys.readouterr().err


def test_decoder_only_fine_tune_keeps_the_encoder_and_latent_scaling_exactly(trained, tmp_path: Path) -> None:
    """Stage 2 of the default VAE: model.init + train_encoder false change the decoder only, so latents a
    transformer was trained on (and their scaling) stay valid."""
    from safetensors.torch import load_file

    cfg, result = trained
    init = result.export
    stage2 = tiny_config(shared_file(SLIDE), model={"init": str(init), "train_encoder": False},
                         data={"min_tissue": 0.0}, budget={"max_steps": 5}, optim={"lr": 1.0e-3, "warmup_steps": 1})
    second = VAETrainer(stage2, tmp_path / "stage2", progress=False).fit()
    before = load_file(init / "diffusion_pytorch_model.safetensors")
    after = load_file(second.export / "diffusion_pytorch_model.safetensors")
    assert after.keys() == before.keys()
    encoder = [k for k in before if k.startswith("encoder.")]
    decoder = [k for k in before if k.startswith("decoder.")]
    assert encoder and all(torch.equal(after[k], before[k]) for k in encoder)
    assert sum(not torch.equal(after[k], before[k]) for k in decoder) > len(decoder) // 2
    for key in ("scaling_factor", "shift_factor"):
        assert second.metrics[key] == result.metrics[key]
    with pytest.raises(ValueError, match="model.train_encoder = false needs model.init"):
        tiny_config(shared_file(SLIDE), model={"train_encoder": False})
    wrong = tiny_config(shared_file(SLIDE), model={"init": str(init), "latent_channels": 8})
    with pytest.raises(ValueError, match="does not fit model"):
        VAETrainer(wrong, tmp_path / "wrong", progress=False).fit()
