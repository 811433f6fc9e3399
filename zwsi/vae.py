"""The latent autoencoder: diffusers' ``AutoencoderKL`` with Z-Image's latent scaling and tiled encode/decode.

Z-Image uses the FLUX.1 VAE (16 latent channels, spatial factor 8, ``scaling_factor`` 0.3611, ``shift_factor``
0.1159). Latents seen by the transformer are ``(z - shift) * scale``; decoding inverts that, runs the decoder and
maps [-1, 1] to uint8 as ``round((x / 2 + 0.5).clamp(0, 1) * 255)``.

Pixels come in as uint8 ``(H, W, 3)`` / ``(B, H, W, 3)`` (numpy or torch) or as float tensors ``(3, H, W)`` /
``(B, 3, H, W)`` in [-1, 1]; latents are float32 ``(C, h, w)`` / ``(B, C, h, w)`` (no frame axis), batched as the
input was. Tiled encode/decode cut the canvas into overlapping tiles (:func:`tile_spans`), run each through the
autoencoder and blend the overlaps with linear ramps (:func:`blend_weights`) so windows join without seams.

Example::

    vae = VAE.from_folder("Z-Image-Turbo")                # reads Z-Image-Turbo/vae/
    z = vae.encode(rgb_uint8)                              # (16, H/8, W/8)
    rgb = vae.decode_tiled(z, tile=128, overlap=16)        # (H, W, 3) uint8
    for y0, band in vae.iter_decode(lambda r, c: store.read(0, r, c), store.level_info(0).shape):
        ...                                                # a gigapixel level, one band of tiles in memory
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

CONFIG_NAME = "config.json"


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Overlapping ``[start, stop)`` spans of length ``tile`` covering ``[0, size)``, spread evenly.

    The first span starts at 0 and the last ends at ``size``; neighbours overlap by at least ``overlap``. A canvas
    no larger than one tile is one span.
    """
    if tile < 1 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))  # ceil: enough tiles that each overlap is >= overlap
    starts = [round(k * (size - tile) / (n - 1)) for k in range(n)]
    return [(s, s + tile) for s in starts]


def _ramps(spans: list[tuple[int, int]], size: int) -> np.ndarray:
    """Per-span 1-D weights ``(n, size)``: linear ramps across each overlap, 1 inside, 0 outside the span."""
    weights = np.zeros((len(spans), size), dtype=np.float64)
    pos = np.arange(size) + 0.5
    for k, (start, stop) in enumerate(spans):
        w = np.ones(stop - start)
        p = pos[start:stop]
        if k > 0 and spans[k - 1][1] > start:  # ramp up across the overlap with the previous span
            w = np.minimum(w, (p - start) / (spans[k - 1][1] - start))
        if k + 1 < len(spans) and spans[k + 1][0] < stop:  # ramp down across the overlap with the next one
            w = np.minimum(w, (stop - p) / (stop - spans[k + 1][0]))
        weights[k, start:stop] = w
    return weights


def blend_weights(spans: list[tuple[int, int]], size: int) -> np.ndarray:
    """Blend weights ``(n, size)`` for the spans of one axis: linear ramps over overlaps, normalised to sum to 1.

    Adjacent spans ramp down/up across their common overlap (the two ramps already sum to 1 there); the
    normalisation only matters where three spans overlap. The 2-D weight of tile (i, j) is the outer product of
    the row and column weights, so 2-D weights sum to 1 as well.
    """
    ramps = _ramps(spans, size)
    total = ramps.sum(axis=0)
    if (total <= 0).any():
        raise ValueError(f"spans {spans} do not cover [0, {size})")
    return ramps / total


def span_blend_weights(spans: list[tuple[int, int]], size: int) -> list[np.ndarray]:
    """:func:`blend_weights` restricted to each span, ``[w_k[start_k:stop_k] for each span k]``, equal values.

    Memory is the spans' total length, not ``len(spans) x size`` (a 100,000 px wide canvas has hundreds of tiles).
    """
    pos = np.arange(size) + 0.5
    ramps, total = [], np.zeros(size, dtype=np.float64)
    for k, (start, stop) in enumerate(spans):
        w = np.ones(stop - start)
        p = pos[start:stop]
        if k > 0 and spans[k - 1][1] > start:
            w = np.minimum(w, (p - start) / (spans[k - 1][1] - start))
        if k + 1 < len(spans) and spans[k + 1][0] < stop:
            w = np.minimum(w, (stop - p) / (stop - spans[k + 1][0]))
        ramps.append(w)
        total[start:stop] += w  # the same additions, in the same order, as blend_weights' column sums
    if (total <= 0).any():
        raise ValueError(f"spans {spans} do not cover [0, {size})")
    return [w / total[start:stop] for w, (start, stop) in zip(ramps, spans)]


def iter_tiled(
    read: Callable[[tuple[int, int], tuple[int, int]], Tensor],
    latent_hw: tuple[int, int],
    fn: Callable[[Tensor], Tensor],
    *,
    tile: int,
    overlap: int,
    f_out: int = 1,
    batch_tiles: int = 16,
) -> Iterator[tuple[int, Tensor]]:
    """Apply ``fn`` to overlapping tiles and yield the blended result in finished row bands.

    Tiles of one tile row go through ``fn`` up to ``batch_tiles`` at a time (concatenated on the batch axis when
    they have one shape); a tile equal to a recent one reuses its output, so a blank area costs one call. ``fn``
    must therefore act on each batch item independently (the VAE does: no batch statistics in eval mode).

    Tiles are laid out on the latent grid (:func:`tile_spans` of ``latent_hw``) and blended with
    :func:`blend_weights`. Only one band of tiles (tile rows x full width) is held; the part of it that the next
    tile row still overlaps is carried over. The bands, concatenated, are the whole blended canvas.

    Args:
        read: ``read((row0, row1), (col0, col1))`` -> the input of the latent span, ``(B, C, h', w')``.
        latent_hw: (rows, cols) of the latent grid.
        fn: the per-tile function; its output is ``f_out`` times the latent span, ``(B, C', h * f_out, w * f_out)``.
        tile: tile side in latents.
        overlap: minimal overlap of neighbouring tiles in latents.
        f_out: output units per latent (8 for decode, 1 for encode).
        batch_tiles: most tiles per ``fn`` call.

    Yields:
        ``(y0, band)``: output row of the band's first row and the band ``(B, C', h_band, latent_hw[1] * f_out)``.
    """
    rows, cols = tile_spans(latent_hw[0], tile, overlap), tile_spans(latent_hw[1], tile, overlap)
    out_w = latent_hw[1] * f_out
    wy = [torch.from_numpy(w).float()
          for w in span_blend_weights([(s * f_out, e * f_out) for s, e in rows], latent_hw[0] * f_out)]
    wx = [torch.from_numpy(w).float() for w in span_blend_weights([(s * f_out, e * f_out) for s, e in cols], out_w)]
    carry: Tensor | None = None  # blended rows [y0, ...) of the previous tile rows, still overlapped
    seen: dict[bytes, Tensor] = {}  # outputs of recent distinct tiles (a blank area repeats one tile)
    for i, (ys, ye) in enumerate(rows):
        y0, y1 = ys * f_out, ye * f_out
        band: Tensor | None = None
        for chunk in _chunks(list(enumerate(cols)), batch_tiles):
            outputs = _apply_batched(fn, [read((ys, ye), (xs, xe)) for _, (xs, xe) in chunk], seen)
            for (j, (xs, xe)), y in zip(chunk, outputs):  # y: (B, C', th * f_out, tw * f_out)
                if band is None:
                    band = torch.zeros(y.shape[0], y.shape[1], y1 - y0, out_w, device=y.device)  # (B, C', h, W)
                    if carry is not None:
                        band[:, :, : carry.shape[2]] += carry
                weight = wy[i][:, None] * wx[j][None, :]  # (th * f_out, tw * f_out)
                band[:, :, :, xs * f_out : xe * f_out] += y * weight.to(y.device)
        stop = rows[i + 1][0] * f_out if i + 1 < len(rows) else y1
        yield y0, band[:, :, : stop - y0]
        carry = band[:, :, stop - y0 :].clone()  # a copy, so the finished band's memory is released


def _chunks(items: list, size: int) -> Iterator[list]:
    for k in range(0, len(items), max(1, size)):
        yield items[k : k + max(1, size)]


SEEN_TILES = 8
"""Distinct tile outputs `iter_tiled` keeps for reuse (blank glass repeats one tile; tissue never repeats)."""


def _apply_batched(fn: Callable[[Tensor], Tensor], tiles: list[Tensor], seen: dict[bytes, Tensor]) -> list[Tensor]:
    """``[fn(t) for t in tiles]``, computed as one batched call over the tiles not met before."""
    keys = [t.detach().cpu().contiguous().numpy().tobytes() for t in tiles]
    found = {key: seen[key] for key in keys if key in seen}
    todo = [k for k, key in enumerate(keys) if key not in found and key not in keys[:k]]
    if todo:
        if len({tuple(tiles[k].shape) for k in todo}) == 1:
            outs = torch.split(fn(torch.cat([tiles[k] for k in todo])), [tiles[k].shape[0] for k in todo])
        else:
            outs = [fn(tiles[k]) for k in todo]
        for k, y in zip(todo, outs):
            found[keys[k]] = y
            if len(seen) >= SEEN_TILES:
                seen.pop(next(iter(seen)))
            seen[keys[k]] = y
    return [found[key] for key in keys]


def tiled_apply(
    x: Tensor,
    latent_hw: tuple[int, int],
    fn: Callable[[Tensor], Tensor],
    *,
    tile: int,
    overlap: int,
    f_in: int = 1,
    f_out: int = 1,
) -> Tensor:
    """:func:`iter_tiled` over an in-memory ``x`` ``(B, C, H, W)`` (``f_in`` input units per latent): one canvas.

    A ``fn`` that acts locally gives exactly ``fn(x)``: the blend weights sum to 1.
    """

    def read(rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
        return x[:, :, rows[0] * f_in : rows[1] * f_in, cols[0] * f_in : cols[1] * f_in]

    bands = [band for _, band in iter_tiled(read, latent_hw, fn, tile=tile, overlap=overlap, f_out=f_out)]
    return torch.cat(bands, dim=2)


class VAE:
    """Z-Image's latent codec around a diffusers ``AutoencoderKL`` or ``AutoencoderTiny`` (TAESD-style, e.g. TAEF1).

    Args:
        autoencoder: the diffusers autoencoder (its config gives ``scaling_factor`` and ``shift_factor``; a missing
            shift is 0). An ``AutoencoderTiny`` has no posterior: its encoder output is the latent.
        dtype: the autoencoder's compute dtype (``torch.float32``, as the official loader, or ``torch.bfloat16``).
    """

    def __init__(self, autoencoder: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        if next(autoencoder.parameters()).dtype != dtype:
            autoencoder = autoencoder.to(dtype=dtype)
        self.autoencoder = autoencoder.eval().requires_grad_(False)
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
        images = images.permute(0, 2, 3, 1).cpu().numpy()
        return images if batched else images[0]

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
        out = tiled_apply(z, tuple(z.shape[-2:]), self._decode, tile=tile, overlap=overlap, f_out=self.spatial_factor)
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
