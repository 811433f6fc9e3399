"""TAEF1 (Z-Image's tiny autoencoder) as a codec: its weights in diffusers' names, the preview decoder of Z-Image's
scaled latents, the VAE wrapper around an AutoencoderTiny, and the trainer's thin decoder on TAEF1's latents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA, shared_file
from zwsi.vae import VAE

TAEF1 = SHARED_DATA.parent / "weights" / "taef1"


def _taef1() -> Path:
    if not (TAEF1 / "taef1_encoder.safetensors").is_file():
        pytest.skip(f"TAEF1 weights {TAEF1} are absent (a fresh clone has no ../shared/weights)")
    return TAEF1


def _tile() -> np.ndarray:
    from slide_io import open_slide

    with open_slide(shared_file("wsi/CMU-1-Small-Region.svs")) as slide:
        return slide.read_region((800, 1200), 0, (256, 256), as_array=True)


def test_taef1_preview_reconstructs_he_through_zimage_scaled_latents() -> None:
    from validation.image_metrics import paired_ssim_psnr
    from zwsi.taef1 import ZIMAGE_SCALING, ZIMAGE_SHIFT, taef1_vae

    torch.set_num_threads(1)
    vae = taef1_vae(_taef1())
    assert vae.tiny and vae.spatial_factor == 8 and vae.latent_channels == 16
    assert (vae.scaling_factor, vae.shift_factor) == (ZIMAGE_SCALING, ZIMAGE_SHIFT)
    rgb = _tile()
    z = vae.encode(rgb)  # (16, 32, 32) in Z-Image's scaled space
    assert z.shape == (16, 32, 32) and 0.1 < float(z.std()) < 1.0  # raw FLUX latents scaled by 0.3611
    _, psnr = paired_ssim_psnr(rgb[None], vae.decode(z)[None])
    assert psnr[0] > 20.0  # measured 22.4 dB on this crop


def test_taef1_folder_without_weights_names_what_is_missing(tmp_path: Path) -> None:
    from zwsi.taef1 import taef1_autoencoder

    with pytest.raises(FileNotFoundError, match=r"lacks \['taef1_encoder.safetensors', 'taef1_decoder.safetensors'\]"):
        taef1_autoencoder(tmp_path)


def test_vae_wrapper_round_trips_a_saved_autoencoder_tiny(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    model = AutoencoderTiny(latent_channels=16, encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                            scaling_factor=0.8, shift_factor=0.1)
    model.save_pretrained(tmp_path / "vae", safe_serialization=True)
    capfd.readouterr()
    vae = VAE.from_folder(tmp_path)  # the hub layout: vae/ inside the folder
    # diffusers saves a redundant block_out_channels key, then warns on loading it: users see no such warning
    assert "block_out_channels" not in capfd.readouterr().err
    assert vae.tiny and (vae.scaling_factor, vae.shift_factor, vae.spatial_factor) == (0.8, 0.1, 8)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    z = vae.encode(rgb)
    raw = model.encode(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1).latents[0]
    torch.testing.assert_close(z, (raw - 0.1) * 0.8)  # scaled as the config says
    assert vae.decode(z).shape == (64, 64, 3)


def test_vae_folder_naming_another_class_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderOobleck"}')
    (tmp_path / "w.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"_class_name 'AutoencoderOobleck'; expected one of \['AutoencoderKL', "
                                         r"'AutoencoderTiny'\]"):
        VAE.from_folder(tmp_path)


def test_train_vae_taef1_kind_trains_only_the_decoder_and_exports_an_autoencoder_tiny(tmp_path: Path) -> None:
    from zwsi.vae.config import vae_train_config_from_dict
    from zwsi.vae.train import VAETrainer

    slide = shared_file("wsi/CMU-1-Small-Region.svs")
    cfg = vae_train_config_from_dict({
        "threads": 1,
        "model": {"kind": "taef1", "taef1": str(_taef1()), "block_out_channels": [8, 8, 8, 8],
                  "decoder_blocks": [1, 1, 1, 1], "train_encoder": False, "decoder_noise": 0.1},
        "data": {"slide": str(slide), "crop": 64, "mpps": [2.0], "mpp_weights": [1.0], "stride": 16},
        "loss": {"kl": 0.0}, "budget": {"batch_size": 2, "max_steps": 3}, "checkpoint": {"every": 3},
        "validation": {"every": 100, "crops_per_mpp": 2}, "export": {"stats_crops": 4},
    })
    trainer = VAETrainer(cfg, tmp_path / "run", progress=False)
    result = trainer.fit()
    encoder0 = VAE.from_folder(result.export).autoencoder.encoder.state_dict()
    from zwsi.taef1 import taef1_state_dict

    reference = {k.removeprefix("encoder."): v for k, v in taef1_state_dict(_taef1(), decoder=False).items()}
    assert all(torch.equal(encoder0[k].float(), reference[k].half().float()) for k in reference)  # frozen, fp16-stored
    assert VAE.from_folder(result.export).tiny and result.metrics["params"] < 1_300_000
    with pytest.raises(ValueError, match="model.kind = taef1 needs model.taef1"):
        vae_train_config_from_dict({"model": {"kind": "taef1", "train_encoder": False}})
