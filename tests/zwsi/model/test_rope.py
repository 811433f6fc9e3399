"""3D RoPE from float positions: Z-Image's rotation for integer positions, relative for any positions."""

from __future__ import annotations

import pytest
import torch

from tests.zwsi.model.model_testing import randn, random_model, randomise_
from zwsi.model import ImageSegment, SequenceSample, grid_positions
from zwsi.model.attention import AttentionLayout
from zwsi.model.rope import apply_rope, rope_factors
from zwsi.model.s3dit import Attention

zimage = pytest.importorskip("diffusers.models.transformers.transformer_z_image")

TURBO_AXES = (32, 48, 48)


def _integer_positions(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, hi, (n,), generator=gen) for hi in (1536, 512, 512)]
    return torch.stack(cols, dim=-1)  # (n, 3) int64


def test_integer_positions_give_zimage_factors_bit_for_bit():
    ids = _integer_positions(4000, seed=0)
    table = zimage.RopeEmbedder(theta=256.0, axes_dims=list(TURBO_AXES), axes_lens=[1536, 512, 512])(ids)  # complex64
    factors = rope_factors(ids.float(), TURBO_AXES, 256.0)
    assert factors.dtype == torch.float32 and torch.equal(torch.view_as_complex(factors), table)


def test_rotation_equals_zimage_interleaved_complex_rotation():
    ids = _integer_positions(300, seed=1)
    table = zimage.RopeEmbedder(theta=256.0, axes_dims=list(TURBO_AXES), axes_lens=[1536, 512, 512])(ids)
    x = randn(300, 4, 128, seed=2).to(torch.bfloat16)
    # Z-Image: view pairs as complex in fp32, multiply, back to the input dtype
    expected = torch.view_as_real(torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * table[:, None]).flatten(2)
    got = apply_rope(x, rope_factors(ids.float(), TURBO_AXES, 256.0))
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected.to(torch.bfloat16))


def test_attention_with_qk_norm_and_rope_equals_diffusers_processor():
    dim, heads, axes = 64, 2, (8, 12, 12)
    reference = zimage.ZImageTransformerBlock(0, dim, heads, heads, 1e-5, True, modulation=False).attention
    randomise_(reference, seed=3)
    ours = Attention(dim, heads, qk_norm=True)
    ours.load_state_dict(reference.state_dict(), strict=True)
    ids = _integer_positions(40, seed=4) % 64
    x = randn(1, 40, dim, seed=5)
    freqs = zimage.RopeEmbedder(theta=256.0, axes_dims=list(axes), axes_lens=[64, 64, 64])(ids)
    with torch.no_grad():
        expected = reference(x, freqs_cis=freqs[None])[0]
        got = ours(x[0], rope_factors(ids.float(), axes, 256.0), AttentionLayout.block_diagonal([40]), "math")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_scores_depend_only_on_position_differences_for_float_and_negative_positions():
    q, k = randn(1, 1, 32, seed=6), randn(1, 1, 32, seed=7)
    axes = (8, 12, 12)

    def score(p_q: list[float], p_k: list[float]) -> float:
        rq = apply_rope(q, rope_factors(torch.tensor([p_q]), axes, 256.0))
        rk = apply_rope(k, rope_factors(torch.tensor([p_k]), axes, 256.0))
        return (rq * rk).sum().item()

    base = score([3.0, 2.5, -1.0], [1.0, -4.25, 0.5])
    shifted = score([3.0 + 7.0, 2.5 - 11.75, -1.0 + 0.375], [1.0 + 7.0, -4.25 - 11.75, 0.5 + 0.375])
    assert shifted == pytest.approx(base, rel=1e-5, abs=1e-5)
    assert abs(score([3.0, 2.5, -1.0], [1.0, -4.0, 0.5]) - base) > 1e-3  # a different offset gives another score


def _sample_with_context(shift: tuple[float, float, float], ctx_offset: float = -4.0) -> SequenceSample:
    """Target 8x8 tokens, a context strip of 4x8 tokens above it; no report, no pad tokens (64 and 32 tokens)."""
    dt, dh, dw = shift
    target = ImageSegment(randn(16, 1, 16, 16, seed=8), grid_positions(1 + dt, 8, 8, h0=dh, w0=dw))
    context = ImageSegment(randn(16, 1, 8, 16, seed=9), grid_positions(1 + dt, 4, 8, h0=ctx_offset + dh, w0=dw))
    return SequenceSample(target=target, t=0.4, report=torch.zeros(0, 32), contexts=[context])


def test_translating_all_image_positions_leaves_the_output_unchanged():
    model = random_model()
    with torch.no_grad():
        base = model([_sample_with_context((0.0, 0.0, 0.0))])[0]
        moved = model([_sample_with_context((5.0, -13.5, 200.25))])[0]
        ctx_moved = model([_sample_with_context((0.0, 0.0, 0.0), ctx_offset=-6.5)])[0]
    torch.testing.assert_close(moved, base, rtol=1e-5, atol=1e-5)
    assert ((ctx_moved - base).norm() / base.norm()).item() > 1e-3  # the context's place relative to the target matters
