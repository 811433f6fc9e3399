"""The latent autoencoder: the codec, its tiling, the shapes the project builds, and training the small VAE.

| module | what it holds |
|---|---|
| `codec` | `VAE`: diffusers' AutoencoderKL with Z-Image's latent scaling, tiled and streamed encode/decode |
| `tiling` | overlapping tiles, linear-ramp blending, row bands (`tile_spans`, `iter_tiled`, `tiled_apply`) |
| `presets` | `build_autoencoder` (a `ModelSection`'s shape), the tiny random VAE (`TINY_VAE`, `tiny_vae`) |
| `config` | `VAETrainConfig` and `load_vae_train_config` (the one typed config loader) |
| `data` | `CropSampler`: real slide crops at several µm/px with a held-out strip, augmentations |
| `evaluate` | PSNR/SSIM (MONAI) on held-out crops and image files |
| `train` | `VAETrainer`, a thin user of the training core (`zwsi.train.core`) |

    from zwsi.vae import VAE
    vae = VAE.from_folder("Z-Image-Turbo")
    rgb = vae.decode_tiled(vae.encode_tiled(image, tile=128, overlap=16), tile=128, overlap=16)
"""

from zwsi.vae.codec import CONFIG_NAME, VAE
from zwsi.vae.tiling import SEEN_TILES, blend_weights, iter_tiled, span_blend_weights, tile_spans, tiled_apply

__all__ = ["CONFIG_NAME", "SEEN_TILES", "VAE", "blend_weights", "iter_tiled", "span_blend_weights", "tile_spans",
           "tiled_apply"]
