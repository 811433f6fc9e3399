"""TAEF1: the pretrained tiny autoencoder of Z-Image's latent space (the FLUX.1 VAE's), as a diffusers AutoencoderTiny.

Z-Image encodes images with the FLUX.1 VAE (16 channels, factor 8) and scales its latents ``(z - 0.1159) * 0.3611``.
TAEF1 (Ollin Boer Bohan, MIT; https://github.com/madebyollin/taesd) is a 1.2M + 1.2M parameter encoder/decoder
pair trained to reproduce that latent space at about a tenth of the VAE's cost. Two uses here:

* a **preview decoder** for Z-Image latents (`taef1_vae(folder)`): a GPU user of the 6B model can look at a window
  without loading the 160 MB VAE;
* the **encoder of the built-in model's codec**: the built-in model generates in Z-Image's own latent space, and a
  small decoder trained on TAEF1 latents of H&E decodes it fast on a CPU (``configs/vae/taef1-decoder.yaml``).

The weights come in TAESD's layout (``taef1_encoder.safetensors``, ``taef1_decoder.safetensors``: one
``nn.Sequential`` each, the decoder's index 0 being the tanh clamp); `taef1_state_dict` maps them onto diffusers'
``AutoencoderTiny`` names (encoder ``encoder.layers.<i>``, decoder ``decoder.layers.<i - 1>``).

    vae = taef1_vae("../shared/weights/taef1")   # zwsi.vae.VAE with Z-Image's scaling
    rgb = vae.decode(zimage_latents)             # (H, W, 3) uint8
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

ENCODER_FILE = "taef1_encoder.safetensors"
DECODER_FILE = "taef1_decoder.safetensors"
ZIMAGE_SCALING = 0.3611  # the FLUX.1 VAE's scaling_factor, Z-Image's latents = (z - shift) * scaling
ZIMAGE_SHIFT = 0.1159
TAEF1_ENCODER = dict(latent_channels=16, encoder_block_out_channels=(64, 64, 64, 64), num_encoder_blocks=(1, 3, 3, 3),
                     act_fn="relu")
"""The encoder half of AutoencoderTiny's TAEF1 shape (the decoder: 64 channels, (3, 3, 3, 1) blocks)."""


def taef1_state_dict(folder: str | Path, *, decoder: bool = True) -> dict[str, torch.Tensor]:
    """TAEF1's weights (float32) under diffusers' AutoencoderTiny names, from a folder in TAESD's layout.

    Raises:
        FileNotFoundError: the folder lacks a weight file (names it and what was expected).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    files = [ENCODER_FILE] + ([DECODER_FILE] if decoder else [])
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"TAEF1 folder {folder} lacks {missing}; expected {files} (TAESD's layout, e.g. "
                                f"../shared/weights/taef1 or the files of madebyollin/taesd)")
    state = {f"encoder.layers.{k}": v.float() for k, v in load_file(folder / ENCODER_FILE).items()}
    if decoder:
        for key, value in load_file(folder / DECODER_FILE).items():
            index, rest = key.split(".", 1)
            state[f"decoder.layers.{int(index) - 1}.{rest}"] = value.float()
    return state


def taef1_autoencoder(folder: str | Path, **decoder_shape: Any) -> torch.nn.Module:
    """A diffusers ``AutoencoderTiny`` with TAEF1's encoder and, by default, TAEF1's decoder.

    Args:
        folder: TAEF1 weights in TAESD's layout.
        decoder_shape: another decoder (``decoder_block_out_channels``, ``num_decoder_blocks``), freshly initialised:
            only the encoder is TAEF1's then (a decoder to be trained on its latents).
    """
    from diffusers import AutoencoderTiny

    model: Any = AutoencoderTiny(**TAEF1_ENCODER, **decoder_shape)
    state = taef1_state_dict(folder, decoder=not decoder_shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if k.startswith("encoder.") or not decoder_shape] + list(unexpected)
    if wrong:
        raise ValueError(f"TAEF1 weights in {folder} do not fit AutoencoderTiny: {wrong[:5]}")
    return model.eval()


def taef1_vae(folder: str | Path, *, device: torch.device | str = "cpu") -> Any:
    """TAEF1 as a `zwsi.vae.VAE` that decodes (and encodes) Z-Image's scaled latents: the preview codec."""
    from zwsi.vae import VAE

    model: Any = taef1_autoencoder(folder)
    model.register_to_config(scaling_factor=ZIMAGE_SCALING, shift_factor=ZIMAGE_SHIFT)
    return VAE(model.to(device))
