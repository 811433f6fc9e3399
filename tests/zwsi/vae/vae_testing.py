"""Helpers shared by the VAE tests and the training-core tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zwsi.vae.config import VAETrainConfig, vae_train_config_from_dict


def tiny_config(slide: Path | str, **sections: dict[str, Any]) -> VAETrainConfig:
    """A tiny AutoencoderKL trained on 32 px crops of ``slide`` (50 steps); ``sections`` update the named sections."""
    data: dict[str, Any] = {
        "seed": 3,
        "threads": 1,
        "model": {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 8, "latent_channels": 4},
        "data": {"slide": str(slide), "crop": 32, "stride": 8},
        "optim": {"lr": 1.0e-2, "warmup_steps": 5},
        "budget": {"batch_size": 4, "max_steps": 50},
        "checkpoint": {"every": 25, "keep": 2},
        "validation": {"every": 1000, "crops_per_mpp": 2},
        "export": {"stats_crops": 16},
    }
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values}
    return vae_train_config_from_dict(data)
