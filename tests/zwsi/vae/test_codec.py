"""The latent codec on a tiny random FLUX-shaped AutoencoderKL: Z-Image's scaling, uint8 mapping, tiling, loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from zwsi.vae import VAE, blend_weights, tile_spans, tiled_apply

TINY = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 8, 8],
    layers_per_block=1,
    latent_channels=16,
    norm_num_groups=4,
    use_quant_conv=False,
    use_post_quant_conv=False,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    mid_block_add_attention=True,
)


@pytest.fixture(scope="module")
def autoencoder() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**TINY).eval()


@pytest.fixture(scope="module")
def vae(autoencoder: AutoencoderKL) -> VAE:
    return VAE(autoencoder)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_decode_is_zimage_formula(vae: VAE, autoencoder: AutoencoderKL) -> None:
    z = torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = autoencoder.decode(z / 0.3611 + 0.1159).sample
    expected = ((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = vae.decode(z)
    assert out.dtype == np.uint8 and out.shape == (2, 32, 48, 3)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(vae.decode(z[1]), expected[1])  # unbatched in -> (H, W, 3) out


def test_encode_is_scaled_posterior_mode_and_uint8_maps_to_unit_range(vae: VAE, autoencoder: AutoencoderKL) -> None:
    rgb = _rgb(32, 48)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    assert x.min() >= -1 and x.max() <= 1
    with torch.no_grad():
        mode = autoencoder.encode(x).latent_dist.mode()
    z = vae.encode(rgb)
    assert z.shape == (16, 4, 6) and z.dtype == torch.float32
    torch.testing.assert_close(z, ((mode - 0.1159) * 0.3611)[0])
    torch.testing.assert_close(vae.encode(x), z[None])  # float [-1, 1] input gives the same latents
    sampled = vae.encode(rgb, sample=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(sampled, z)


def test_tile_spans_cover_the_canvas_with_the_requested_overlap() -> None:
    assert tile_spans(100, 128, 16) == [(0, 100)]
    for size, tile, overlap in [(300, 128, 16), (129, 128, 16), (15, 8, 2), (1000, 128, 32)]:
        spans = tile_spans(size, tile, overlap)
        assert spans[0][0] == 0 and spans[-1][1] == size
        assert all(e - s == tile for s, e in spans)
        assert all(spans[k][1] - spans[k + 1][0] >= overlap for k in range(len(spans) - 1))
    with pytest.raises(ValueError, match="overlap < tile, got tile=8, overlap=8"):
        tile_spans(20, 8, 8)


@pytest.mark.parametrize("size, tile, overlap", [(300, 128, 16), (15, 8, 2), (47, 10, 3), (64, 64, 8)])
def test_blend_weights_sum_to_one_and_ramp_linearly(size: int, tile: int, overlap: int) -> None:
    spans = tile_spans(size, tile, overlap)
    w = blend_weights(spans, size)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, atol=1e-12)
    assert (w >= 0).all() and (w <= 1).all()
    for k, (s, e) in enumerate(spans):
        assert (w[k, :s] == 0).all() and (w[k, e:] == 0).all()
    if len(spans) == 2:  # two spans: the falling ramp is linear across the overlap
        s1, e0 = spans[1][0], spans[0][1]
        np.testing.assert_allclose(np.diff(w[0, s1:e0]), -1 / (e0 - s1), atol=1e-12)
    # 2-D weights are outer products, so they sum to 1 too
    w2 = np.einsum("iy,jx->ijyx", w, w).sum(axis=(0, 1))
    np.testing.assert_allclose(w2, 1.0, atol=1e-12)


def test_tiled_apply_of_a_local_function_is_exact() -> None:
    x = torch.randn(1, 4, 37, 53, generator=torch.Generator().manual_seed(2))

    def upsample(t: torch.Tensor) -> torch.Tensor:  # acts per latent: tiling must not change it at all
        return torch.tanh(t).repeat_interleave(8, -1).repeat_interleave(8, -2) * 3

    tiled = tiled_apply(x, (37, 53), upsample, tile=16, overlap=5, f_out=8)
    torch.testing.assert_close(tiled, upsample(x), atol=1e-6, rtol=0)
    down = tiled_apply(upsample(x), (37, 53), lambda t: t[:, :, ::8, ::8], tile=16, overlap=5, f_in=8)
    torch.testing.assert_close(down, upsample(x)[:, :, ::8, ::8], atol=1e-6, rtol=0)


def test_tiled_decode_matches_full_decode_and_beats_diffusers_tiling(vae: VAE, autoencoder: AutoencoderKL) -> None:
    z = torch.randn(16, 40, 56, generator=torch.Generator().manual_seed(3))
    full = vae.decode(z).astype(np.int16)
    tiled = vae.decode_tiled(z, tile=32, overlap=8).astype(np.int16)
    ours = np.abs(tiled - full).mean()
    # GroupNorm statistics and mid-block attention are per tile, so tiling is not exact for any tiled VAE decode;
    # on this random tiny VAE the mean error is about 1.5 uint8 levels.
    assert ours < 2.5
    # diffusers' own tiling at the same tile size and 25% overlap (8 latents) is the baseline
    autoencoder.enable_tiling()
    autoencoder.tile_latent_min_size, autoencoder.tile_sample_min_size, autoencoder.tile_overlap_factor = 32, 256, 0.25
    try:
        with torch.no_grad():
            x = autoencoder.tiled_decode(z[None] / 0.3611 + 0.1159).sample
    finally:
        autoencoder.disable_tiling()
    theirs = ((x / 2 + 0.5).clamp(0, 1) * 255).round()[0].permute(1, 2, 0).numpy().astype(np.int16)
    assert ours < np.abs(theirs - full).mean()
    # one tile covering everything is the full decode
    small = z[:, :8, :8]
    np.testing.assert_array_equal(vae.decode_tiled(small, tile=16, overlap=4), vae.decode(small))


def test_iter_decode_streams_bands_that_stack_to_the_tiled_decode(vae: VAE) -> None:
    z = np.random.default_rng(7).standard_normal((16, 28, 20)).astype(np.float32)  # a "store" level, numpy
    reads: list[tuple[tuple[int, int], tuple[int, int]]] = []

    def read(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        reads.append((rows, cols))
        return z[:, rows[0] : rows[1], cols[0] : cols[1]]

    bands = list(vae.iter_decode(read, (28, 20), tile=12, overlap=4))
    assert len(reads) == len(tile_spans(28, 12, 4)) * len(tile_spans(20, 12, 4)) == 6  # every tile decoded once
    assert len(bands) == len(tile_spans(28, 12, 4)) == 3
    y = 0
    for y0, band in bands:
        assert y0 == y and band.dtype == np.uint8 and band.shape[1:] == (160, 3)
        y += band.shape[0]
    assert y == 28 * 8
    stacked = np.concatenate([band for _, band in bands])
    np.testing.assert_array_equal(stacked, vae.decode_tiled(torch.from_numpy(z), tile=12, overlap=4))


def test_tiled_encode_matches_full_encode(vae: VAE) -> None:
    rgb = _rgb(128, 192, seed=4)
    full = vae.encode(rgb)
    tiled = vae.encode_tiled(rgb, tile=16, overlap=6)
    assert tiled.shape == full.shape == (16, 16, 24)
    assert (tiled - full).abs().mean() < 0.2 * full.abs().mean()


def test_bf16_runs_close_to_fp32(autoencoder: AutoencoderKL) -> None:
    z = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(5))
    fp32 = VAE(autoencoder).decode(z).astype(np.int16)
    torch.manual_seed(0)
    bf16 = VAE(AutoencoderKL(**TINY), dtype=torch.bfloat16)
    assert bf16.autoencoder.dtype == torch.bfloat16
    assert np.abs(bf16.decode(z).astype(np.int16) - fp32).mean() < 3.0
    with pytest.raises(ValueError, match="dtype must be torch.float32, torch.bfloat16 or torch.float16"):
        VAE(autoencoder, dtype=torch.float64)


def test_loads_hub_folder_or_vae_folder_safetensors_only(tmp_path: Path, autoencoder: AutoencoderKL) -> None:
    autoencoder.save_pretrained(tmp_path / "snapshot" / "vae", safe_serialization=True)
    z = torch.randn(16, 4, 4, generator=torch.Generator().manual_seed(6))
    expected = VAE(autoencoder).decode(z)
    for folder in (tmp_path / "snapshot", tmp_path / "snapshot" / "vae"):
        loaded = VAE.from_folder(folder)
        assert (loaded.scaling_factor, loaded.shift_factor, loaded.spatial_factor) == (0.3611, 0.1159, 8)
        np.testing.assert_array_equal(loaded.decode(z), expected)
    autoencoder.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ValueError, match=r"no \*.safetensors weights in .*pickled.*diffusion_pytorch_model.bin"):
        VAE.from_folder(tmp_path / "pickled")
    with pytest.raises(FileNotFoundError, match="no VAE config.json in"):
        VAE.from_folder(tmp_path / "missing")


def test_rejects_bad_inputs(vae: VAE) -> None:
    with pytest.raises(ValueError, match="pixel size 30x48 must be divisible by the VAE factor 8"):
        vae.encode(_rgb(30, 48))
    with pytest.raises(ValueError, match=r"uint8 pixels must be \(H, W, 3\) or \(B, H, W, 3\), got \(32, 32, 4\)"):
        vae.encode(np.zeros((32, 32, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"latents must be .* with C = 16, got \(4, 8, 8\)"):
        vae.decode(torch.zeros(4, 8, 8))


def test_iter_tiled_batches_a_tile_row_and_computes_repeated_tiles_once() -> None:
    """A canvas of one repeated latent pattern (blank glass) costs one call per distinct tile; the result is exact."""
    from zwsi.vae import iter_tiled

    calls: list[int] = []

    def fn(t: torch.Tensor) -> torch.Tensor:  # a local function: a per-tile-exact result is fn of the canvas
        calls.append(t.shape[0])
        return t * 2.0 + 1.0

    blank = torch.ones(1, 4, 40, 70) * torch.arange(4.0)[None, :, None, None]  # (1, 4, 40, 70): uniform per channel
    bands = [b for _, b in iter_tiled(lambda r, c: blank[:, :, r[0]:r[1], c[0]:c[1]], (40, 70), fn, tile=16, overlap=2)]
    torch.testing.assert_close(torch.cat(bands, dim=2), blank * 2.0 + 1.0, rtol=1e-6, atol=1e-6)
    assert calls == [1]  # 3 x 5 identical tiles: one call

    calls.clear()
    tissue = torch.randn(1, 4, 40, 70, generator=torch.Generator().manual_seed(0))
    bands = [b for _, b in iter_tiled(lambda r, c: tissue[:, :, r[0]:r[1], c[0]:c[1]], (40, 70), fn, tile=16, overlap=2,
                                      batch_tiles=4)]
    torch.testing.assert_close(torch.cat(bands, dim=2), tissue * 2.0 + 1.0, rtol=1e-5, atol=1e-5)
    assert calls == [4, 1] * 3  # per tile row: 5 distinct tiles in chunks of 4 and 1
