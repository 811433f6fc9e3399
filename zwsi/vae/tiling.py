"""Tiled application of a per-tile function over a latent canvas: overlapping tiles, linear-ramp blending, bands.

A canvas too large for one autoencoder call (a slide level) is cut into overlapping tiles (`tile_spans`), each
tile goes through the function, and the overlaps are blended with linear ramps that sum to 1 (`blend_weights`), so
a function that acts locally gives the same result as on the whole canvas and windows join without seams.
`iter_tiled` yields the result in finished row bands (one band of tiles in memory), `tiled_apply` as one canvas.

    z = tiled_apply(x, (h, w), encode, tile=128, overlap=16, f_in=8)     # pixels -> latents
    for y0, band in iter_tiled(read, (h, w), decode, tile=128, overlap=16, f_out=8):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor


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
        assert band is not None  # every tile row has at least one tile
        stop = rows[i + 1][0] * f_out if i + 1 < len(rows) else y1
        yield y0, band[:, :, : stop - y0]
        carry = band[:, :, stop - y0 :].clone()  # a copy, so the finished band's memory is released


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
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
            outs = list(torch.split(fn(torch.cat([tiles[k] for k in todo])), [tiles[k].shape[0] for k in todo]))
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
