"""The latent autoencoder: diffusers' ``AutoencoderKL`` with Z-Image's latent scaling and tiled encode/decode.

Z-Image uses the FLUX.1 VAE (16 latent channels, spatial factor 8, ``scaling_factor`` 0.3611, ``shift_factor``
0.1159). Latents seen by the transformer are ``(z - shift) * scale``; decoding inverts that, runs the decoder and
maps [-1, 1] to uint8 as ``round((x / 2 + 0.5).clamp(0, 1) * 255)``.

Pixels come in as uint8 ``(H, W, 3)`` / ``(B, H, W, 3)`` (numpy or torch) or as float tensors ``(3, H, W)`` /
``(B, 3, H, W)`` in [-1, 1]; latents are float32 ``(C, h, w)`` / ``(B, C, h, w)`` (no frame axis), batched as the
input was. Tiled encode/decode cut the canvas into overlapping tiles, run each through the autoencoder and blend
the overlaps with linear ramps (`zwsi.vae.tiling`) so windows join without seams.

Example::

    vae = VAE.from_folder("Z-Image-Turbo")                # reads Z-Image-Turbo/vae/
    z = vae.encode(rgb_uint8)                              # (16, H/8, W/8)
    rgb = vae.decode_tiled(z, tile=128, overlap=16)        # (H, W, 3) uint8
    for y0, band in vae.iter_decode(lambda r, c: store.read(0, r, c), store.level_info(0).shape):
        ...                                                # a gigapixel level, one band of tiles in memory
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zwsi.vae.tiling import iter_tiled, tiled_apply

CONFIG_NAME = "config.json"


class _DropTinyBlockOutChannels(logging.Filter):
    """diffusers' ``AutoencoderTiny`` registers ``block_out_channels`` in the config it saves, then warns on loading
    that config that the key is unexpected; the key is redundant (it repeats ``decoder_block_out_channels``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("block_out_channels" in message and "AutoencoderTiny" in message and "not expected" in message)


@contextlib.contextmanager
def _quiet_tiny_block_out_channels() -> Iterator[None]:
    """Drop only that one diffusers warning while a VAE loads; every other message passes."""
    logger = logging.getLogger("diffusers.configuration_utils")
    flt = _DropTinyBlockOutChannels()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


class VAE:
    """Z-Image's latent codec around a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` (TAESD-style, e.g. TAEF1).

    Args:
        autoencoder: the diffusers autoencoder (its config gives ``scaling_factor`` and ``shift_factor``; a missing
            shift is 0). An ``AutoencoderTiny`` has no posterior: its encoder output is the latent.
        dtype: the autoencoder's compute dtype (``torch.float32``, as the official loader, or ``torch.bfloat16``).
    """

    def __init__(self, autoencoder: Any, dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        if next(autoencoder.parameters()).dtype != dtype:
            autoencoder = autoencoder.to(dtype=dtype)
        self.autoencoder: Any = autoencoder.eval().requires_grad_(False)
        self.dtype = dtype
        config = autoencoder.config
        self.scaling_factor = float(config.scaling_factor)
        self.shift_factor = float(config.shift_factor or 0.0)
        self.latent_channels = int(config.latent_channels)
        self.tiny = type(autoencoder).__name__ == "AutoencoderTiny"
        if self.tiny:
            self.spatial_factor = int(config.upsampling_scaling_factor) ** (len(config.decoder_block_out_channels) - 1)
        else:
            self.spatial_factor = 2 ** (len(config.block_out_channels) - 1)

    @classmethod
    def from_folder(
        cls, path: str | Path, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> VAE:
        """Load from a hub snapshot (its ``vae/`` subfolder) or a VAE folder itself; safetensors weights only.
        ``config.json``'s ``_class_name`` picks ``AutoencoderKL`` (the default) or ``AutoencoderTiny``.

        Raises:
            FileNotFoundError: no ``config.json`` in ``path`` or ``path/vae``.
            ValueError: the folder holds no ``*.safetensors`` weights (pickled weights are refused), or names another
                class.
        """
        import json

        from diffusers import AutoencoderKL, AutoencoderTiny

        root = Path(path)
        folder = root / "vae" if (root / "vae" / CONFIG_NAME).is_file() else root
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no VAE {CONFIG_NAME} in {root} or {root / 'vae'}")
        if not any(folder.glob("*.safetensors")):
            found = sorted(p.name for p in folder.iterdir())
            raise ValueError(f"no *.safetensors weights in {folder} (found {found}); pickled weights are refused")
        name = json.loads((folder / CONFIG_NAME).read_text()).get("_class_name", "AutoencoderKL")
        classes = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}
        if name not in classes:
            raise ValueError(f"{folder / CONFIG_NAME} names _class_name {name!r}; expected one of {sorted(classes)}")
        with _quiet_tiny_block_out_channels():
            autoencoder = classes[name].from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
        return cls(autoencoder.to(device), dtype=dtype)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    # ---- pixels <-> model space -------------------------------------------------------------------------------
    def _to_model_pixels(self, pixels: np.ndarray | Tensor) -> tuple[Tensor, bool]:
        """Pixels as ``(B, 3, H, W)`` in [-1, 1] on the VAE's device, and whether the input had a batch axis."""
        # Regions read from slides may be read-only views: copy only those (torch needs writable memory).
        x = torch.from_numpy(np.require(pixels, requirements=["C", "W"])) if isinstance(pixels, np.ndarray) else pixels
        if x.dtype == torch.uint8:
            if x.dim() not in (3, 4) or x.shape[-1] != 3:
                raise ValueError(f"uint8 pixels must be (H, W, 3) or (B, H, W, 3), got {tuple(x.shape)}")
            batched = x.dim() == 4
            x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        elif x.is_floating_point():
            if x.dim() not in (3, 4) or x.shape[-3] != 3:
                raise ValueError(f"float pixels must be (3, H, W) or (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
            batched = x.dim() == 4
            x = x.reshape(-1, *x.shape[-3:])
        else:
            raise ValueError(f"pixels must be uint8 or float in [-1, 1], got dtype {x.dtype}")
        h, w = x.shape[-2:]
        if h % self.spatial_factor or w % self.spatial_factor:
            raise ValueError(f"pixel size {h}x{w} must be divisible by the VAE factor {self.spatial_factor}")
        return x.to(self.device), batched

    def _to_model_latents(self, latents: Tensor) -> tuple[Tensor, bool]:
        if latents.dim() not in (3, 4) or latents.shape[-3] != self.latent_channels:
            raise ValueError(
                f"latents must be (C, h, w) or (B, C, h, w) with C = {self.latent_channels}, got {tuple(latents.shape)}"
            )
        return latents.reshape(-1, *latents.shape[-3:]).to(self.device), latents.dim() == 4

    @staticmethod
    def _to_uint8(pixels: Tensor, batched: bool) -> np.ndarray:
        """[-1, 1] ``(B, 3, H, W)`` -> uint8 ``(B, H, W, 3)`` (or ``(H, W, 3)``), rounded as Z-Image does."""
        images = (pixels.float() / 2).add_(0.5).clamp_(0, 1).mul_(255).round_().to(torch.uint8)  # one float temporary
        rgb: np.ndarray = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
        return rgb if batched else rgb[0]

    def _memory_format(self) -> torch.memory_format:
        """channels_last on the CPU (oneDNN convolutions run ~1.4x faster there), the default layout elsewhere."""
        fmt = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        if getattr(self, "_format", None) is not fmt:
            self.autoencoder.to(memory_format=fmt)
            self._format = fmt
        return fmt

    @torch.no_grad()
    def _encode(self, x: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        x = x.to(self.dtype).contiguous(memory_format=self._memory_format())
        if self.tiny:  # a deterministic encoder: its output is the latent
            z = self.autoencoder.encode(x).latents
        else:
            posterior = self.autoencoder.encode(x).latent_dist
            z = posterior.sample(generator) if sample else posterior.mode()
        return ((z.float() - self.shift_factor) * self.scaling_factor).contiguous()

    @torch.no_grad()
    def _decode(self, latents: Tensor) -> Tensor:
        z = (latents.float() / self.scaling_factor + self.shift_factor).to(self.dtype)
        return self.autoencoder.decode(z.contiguous(memory_format=self._memory_format())).sample.float()

    # ---- public API ---------------------------------------------------------------------------------------------
    def encode(
        self, pixels: np.ndarray | Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Pixels -> scaled latents ``(z - shift) * scale`` (posterior mode unless ``sample``), float32."""
        x, batched = self._to_model_pixels(pixels)
        z = self._encode(x, sample, generator)
        return z if batched else z[0]

    def decode(self, latents: Tensor) -> np.ndarray:
        """Scaled latents -> uint8 RGB ``(H, W, 3)`` (or ``(B, H, W, 3)``), as Z-Image's pipeline."""
        z, batched = self._to_model_latents(latents)
        return self._to_uint8(self._decode(z), batched)

    def decode_tiled(self, latents: Tensor, *, tile: int = 128, overlap: int = 16) -> np.ndarray:
        """:meth:`decode` of a large latent canvas tile by tile, blending overlaps with linear ramps.

        Args:
            latents: ``(C, h, w)`` or ``(B, C, h, w)`` scaled latents.
            tile: tile size in latents (128 = 1024 px).
            overlap: minimal overlap of neighbouring tiles in latents.
        """
        z, batched = self._to_model_latents(latents)
        out = tiled_apply(z, (z.shape[-2], z.shape[-1]), self._decode, tile=tile, overlap=overlap,
                          f_out=self.spatial_factor)
        return self._to_uint8(out, batched)

    def iter_decode(
        self,
        read: Callable[[tuple[int, int], tuple[int, int]], np.ndarray | Tensor],
        latent_hw: tuple[int, int],
        *,
        tile: int = 128,
        overlap: int = 16,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Stream-decode a latent canvas too large for memory, yielding finished uint8 row bands top to bottom.

        The bands, stacked, equal :meth:`decode_tiled` of the whole canvas; memory holds one band of tiles.

        Args:
            read: ``read((row0, row1), (col0, col1)) -> (C, h, w)`` latents, e.g.
                ``lambda rows, cols: store.read(level, rows, cols)``.
            latent_hw: (rows, cols) of the latent canvas.
            tile: tile size in latents.
            overlap: minimal tile overlap in latents.

        Yields:
            ``(y0, band)``: the band's first pixel row and the uint8 band ``(h, latent_hw[1] * 8, 3)``.
        """

        def read_tile(rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
            z = read(rows, cols)
            return self._to_model_latents(z if isinstance(z, Tensor) else torch.from_numpy(np.asarray(z)))[0]

        f = self.spatial_factor
        for y0, band in iter_tiled(read_tile, latent_hw, self._decode, tile=tile, overlap=overlap, f_out=f):
            # the band is a finished, disjoint view of iter_tiled's buffer: map it to uint8 in place (same ops as
            # _to_uint8), so a 100,000 px wide band needs no second float copy
            band.div_(2).add_(0.5).clamp_(0, 1).mul_(255).round_()
            yield y0, band.to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()
            del band  # before iter_tiled builds the next band

    def encode_tiled(
        self,
        pixels: np.ndarray | Tensor,
        *,
        tile: int = 128,
        overlap: int = 16,
        sample: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """:meth:`encode` of a large image tile by tile; ``tile`` and ``overlap`` in latents (x8 in pixels)."""
        x, batched = self._to_model_pixels(pixels)
        f = self.spatial_factor
        latent_hw = (x.shape[-2] // f, x.shape[-1] // f)
        z = tiled_apply(x, latent_hw, lambda t: self._encode(t, sample, generator), tile=tile, overlap=overlap, f_in=f)
        return z if batched else z[0]
