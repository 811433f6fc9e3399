"""Training refuses non-finite settings before any work, and never writes a checkpoint with NaN weights."""

from __future__ import annotations

import pytest
import torch

from zwsi.cli import main
from zwsi.finite import NonFiniteWeightsError, check_finite
from zwsi.train.config import load_train_config
from zwsi.vae.config import load_vae_train_config


@pytest.mark.parametrize("override, message", [
    ({"optim": {"lr": float("inf")}}, r"optim.lr must be a finite number, got inf"),
    ({"optim": {"lr": float("nan")}}, r"optim.lr must be a finite number, got nan"),
    ({"optim": {"lr": -1e-4}}, r"optim.lr must be > 0, got -0.0001"),
    ({"ema": {"decay": float("nan")}}, r"ema.decay must be a finite number"),
    ({"data": {"phase_weights": [1.0, float("inf"), 1.0, 1.0]}}, r"data.phase_weights must be a finite number"),
])
def test_train_config_rejects_non_finite_values(override, message):
    with pytest.raises(ValueError, match=message):
        load_train_config("configs/train/tiny-cpu.yaml", override)


def test_vae_train_config_rejects_an_infinite_lr():
    with pytest.raises(ValueError, match=r"optim.lr must be a finite number, got inf"):
        load_vae_train_config("configs/vae/small.yaml", {"optim": {"lr": float("inf")}})


def test_train_cli_with_lr_inf_exits_2_before_training(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(open("configs/train/tiny-cpu.yaml").read().replace("  lr: 1.0e-3", "  lr: .inf"))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "optim.lr must be a finite number, got inf" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_check_finite_names_the_bad_tensor():
    check_finite({"a": torch.ones(3)}, "checkpoint at step 1")
    with pytest.raises(NonFiniteWeightsError, match=r"checkpoint at step 7 not written: b holds 2 NaN/infinite"):
        check_finite({"a": torch.ones(3), "b": torch.tensor([1.0, float("nan"), float("inf")])}, "checkpoint at step 7")
