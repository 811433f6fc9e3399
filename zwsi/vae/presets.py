"""AutoencoderKL shapes the project builds: the trainable small VAE of a `ModelSection`, and the tiny random VAE.

    autoencoder = build_autoencoder(ModelSection(block_out_channels=(8, 16, 32, 128), norm_num_groups=8))
    vae = tiny_vae(seed=0)          # tests and benchmarks: random weights, FLUX-shaped latents (16 ch, factor 8)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from zwsi.vae.codec import VAE
    from zwsi.vae.config import ModelSection

TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
    latent_channels=16, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
    scaling_factor=0.3611, shift_factor=0.1159, mid_block_add_attention=True,
)
"""A tiny FLUX-shaped AutoencoderKL (16 latent channels, factor 8) for the random `tiny` pipeline and tests."""


def build_autoencoder(model: ModelSection) -> Any:
    """A fresh diffusers ``AutoencoderKL`` of this shape (no quant convs, as the FLUX/Z-Image VAE), or for ``kind:
    taef1`` an ``AutoencoderTiny`` with TAEF1's encoder (frozen) and TAEF1's or a fresh decoder."""
    from diffusers import AutoencoderKL

    if model.kind == "taef1":
        from zwsi.taef1 import taef1_autoencoder

        assert model.taef1 is not None  # ModelSection.validate requires it for kind taef1

        if model.taef1_decoder:
            return taef1_autoencoder(model.taef1).requires_grad_(False)
        tiny = taef1_autoencoder(model.taef1, decoder_block_out_channels=model.block_out_channels,
                                 num_decoder_blocks=model.decoder_blocks)
        tiny.encoder.requires_grad_(False)
        return tiny

    n = len(model.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=model.block_out_channels,
        layers_per_block=model.layers_per_block,
        latent_channels=model.latent_channels,
        norm_num_groups=model.norm_num_groups,
        mid_block_add_attention=model.mid_block_add_attention,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def tiny_autoencoder(seed: int = 0) -> Any:
    """`TINY_VAE` with weights drawn from ``seed`` (the global RNG is left as it was)."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        autoencoder: Any = AutoencoderKL(**TINY_VAE)
        return autoencoder.eval()


def tiny_vae(seed: int = 0, device: torch.device | str = "cpu") -> VAE:
    """The tiny random VAE (`TINY_VAE`) as a codec: the same weights for a seed on every machine."""
    from zwsi.vae.codec import VAE

    return VAE(tiny_autoencoder(seed).to(device))
