"""Random generation pipelines of a model preset's shapes, built offline: for benchmarks and CUDA tests.

`SlideGenerator.tiny` needs the offline MiniLM package, which the GPU machine does not have; this builds the same
kind of pipeline from nothing but installed libraries, for any S3-DiT preset:

| part         | what                                                                                         |
|--------------|----------------------------------------------------------------------------------------------|
| transformer  | `S3DiT` of the preset, random weights (seed), eval, in the generate config's dtype           |
| VAE          | diffusers `AutoencoderKL`: FLUX.1's shape (84M, 16 channels, /8) for z-image-turbo, else the  |
|              | tiny FLUX-shaped one of `zwsi.vae.presets.TINY_VAE`; random weights                    |
| text encoder | `ZImageTextEncoder` (Qwen3 chat template, hidden_states[-2]) over a 2-layer random Qwen3 whose |
|              | width is the preset's cap_feat_dim, and a byte-level BPE trained locally on pathology words    |

    gen = random_pipeline("z-image-turbo", overrides={"device": "cuda", "batch_size": 4})
    gen.generate(report, 4096 * 0.5, 4096 * 0.5, 0.5, seed=1, out="slide.tiff")
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# FLUX.1's VAE (Z-Image's): diffusers AutoencoderKL config of black-forest-labs/FLUX.1-dev vae/config.json.
FLUX_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    latent_channels=16, norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False,
    scaling_factor=0.3611, shift_factor=0.1159, mid_block_add_attention=True,
)
GENERATE_PRESETS = {"z-image-turbo": "z-image-turbo", "tiny": "tiny", "zwsi-small": "zwsi-small"}


def random_text_encoder(width: int, folder: Path, device: torch.device | str, seed: int = 0) -> Any:
    """A `ZImageTextEncoder` over a random 2-layer Qwen3 of hidden size `width` (hub layout written to `folder`)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.reports.tiny_tokenizer import build_tiny_qwen_tokenizer
    from zwsi.text.encoders import ZImageTextEncoder

    heads = 4
    build_tiny_qwen_tokenizer(folder / "tokenizer")
    config = Qwen3Config(vocab_size=400, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=heads, head_dim=max(8, width // heads),
                         tie_word_embeddings=True, max_position_embeddings=1024, rms_norm_eps=1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        Qwen3ForCausalLM(config).save_pretrained(folder / "text_encoder")
    return ZImageTextEncoder.from_pretrained(folder, device=device, dtype=torch.float32)


def random_pipeline(
    preset: str = "z-image-turbo",
    *,
    seed: int = 0,
    config: Any = None,
    overrides: Mapping[str, Any] | None = None,
    folder: str | Path | None = None,
) -> Any:
    """A `SlideGenerator` with random weights of the preset's shapes (see the module docstring).

    Args:
        preset: an S3-DiT preset ("z-image-turbo", "zwsi-small", "tiny"); its generate preset gives the geometry.
        seed: weight seed (transformer seed, VAE seed + 1, text encoder seed + 2).
        config: a `GenerateConfig` to start from (default: the preset's).
        overrides: generate settings applied last (device, batch_size, window_tokens, ...); None values ignored.
        folder: where the text encoder's hub files go (default: a new temporary folder, left in place because the
            encoder's fingerprint reads it).
    """
    from diffusers import AutoencoderKL

    from zwsi.generate.config import GenerateConfig
    from zwsi.generate.distributed import process_group
    from zwsi.generate.pipeline import SlideGenerator
    from zwsi.model import S3DiT, S3DiTConfig
    from zwsi.vae import VAE
    from zwsi.vae.presets import TINY_VAE

    if preset not in GENERATE_PRESETS:
        raise ValueError(f"unknown random pipeline preset {preset!r}; expected one of {sorted(GENERATE_PRESETS)}")
    cfg = config or GenerateConfig.preset(GENERATE_PRESETS[preset])
    cfg = cfg.merged({k: v for k, v in (overrides or {}).items() if v is not None})
    device = torch.device(process_group(cfg.device).device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):  # initialised where it runs: a 6B model is not built on the CPU first
            transformer = S3DiT(S3DiTConfig.preset(preset))
        torch.manual_seed(seed + 1)
        autoencoder = AutoencoderKL(**(FLUX_VAE if preset == "z-image-turbo" else TINY_VAE))
    transformer = transformer.to(dtype).eval().requires_grad_(False)
    vae = VAE(autoencoder.to(device))
    where = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="zwsi-random-text-encoder-"))
    encoder = random_text_encoder(transformer.config.cap_feat_dim, where, device, seed + 2)
    name = f"random-{preset}-seed{seed}"
    # the weights' identity is (preset, seed): hashing 12 GB of random weights would only cost time
    return SlideGenerator(transformer, vae, encoder, config=dataclasses.replace(cfg), name=name,
                          model_sha256=hashlib.sha256(name.encode()).hexdigest())
