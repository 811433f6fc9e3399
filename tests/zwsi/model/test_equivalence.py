"""forward_t2i equals diffusers' ZImageTransformer2DModel on the same random weights (fp32, CPU, tiny configs)."""

from __future__ import annotations

import pytest
import torch

from tests.zwsi.model.model_testing import randn, randomise_
from zwsi.model import S3DiT, S3DiTConfig

diffusers = pytest.importorskip("diffusers")

CONFIGS = {
    "tiny": S3DiTConfig.preset("tiny"),
    # more heads, a narrower head (16 = 4 + 6 + 6), a different RoPE theta and norm eps
    "tiny-4heads": S3DiTConfig(
        dim=64, n_layers=1, n_refiner_layers=2, n_heads=4, n_kv_heads=4, cap_feat_dim=24, axes_dims=(4, 6, 6),
        rope_theta=10000.0, norm_eps=1e-6,
    ),
}


def _pair(cfg: S3DiTConfig, seed: int = 0) -> tuple[torch.nn.Module, S3DiT]:
    """A diffusers reference with every parameter random, and our model with its state dict (strict)."""
    reference = randomise_(diffusers.ZImageTransformer2DModel(**cfg.to_dict()), seed).eval()
    ours = S3DiT(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def _batch(cfg: S3DiTConfig):
    # image token counts 30, 16 and 2*12 (two frames): all need image padding to 32, and they differ;
    # caption lengths 7, 40 and 32 (no caption padding) differ too.
    x = [randn(16, 1, 12, 10, seed=1), randn(16, 1, 8, 8, seed=2), randn(16, 2, 6, 8, seed=3)]
    t = torch.tensor([0.3, 0.8, 0.0])
    caps = [randn(7, cfg.cap_feat_dim, seed=4), randn(40, cfg.cap_feat_dim, seed=5), randn(32, cfg.cap_feat_dim, seed=6)]
    return x, t, caps


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_t2i_equals_diffusers_on_an_unequal_batch(name):
    cfg = CONFIGS[name]
    reference, ours = _pair(cfg)
    x, t, caps = _batch(cfg)
    with torch.no_grad():
        expected = reference(x, t, caps, return_dict=False)[0]
        got = ours.forward_t2i(x, t, caps)
    assert [g.shape for g in got] == [xi.shape for xi in x]
    for g, e in zip(got, expected):
        assert e.abs().mean() > 0.1  # a non-trivial output
        assert _rel(g, e) <= 1e-5


def test_equivalence_fails_when_a_zero_initialised_part_differs():
    """The comparison is sensitive to the pad token and the final layer (randomised, not left at zero)."""
    cfg = CONFIGS["tiny"]
    reference, ours = _pair(cfg)
    x, t, caps = _batch(cfg)
    with torch.no_grad():
        expected = reference(x, t, caps, return_dict=False)[0]
        ours.x_pad_token.add_(0.5)
        got = ours.forward_t2i(x, t, caps)
    assert _rel(got[0], expected[0]) > 1e-3  # sample 0 has image pad tokens


def test_gradients_equal_diffusers_with_gradient_checkpointing():
    cfg = CONFIGS["tiny"]
    reference, ours = _pair(cfg, seed=3)
    ours.enable_gradient_checkpointing()
    x, t, caps = _batch(cfg)
    target = [randn(*xi.shape, seed=10 + i) for i, xi in enumerate(x)]
    for out in (reference(x, t, caps, return_dict=False)[0], ours.forward_t2i(x, t, caps)):
        sum(((o - y) ** 2).mean() for o, y in zip(out, target)).backward()
    ref_grads = dict(reference.named_parameters())
    for name, p in ours.named_parameters():
        assert _rel(p.grad, ref_grads[name].grad) <= 1e-4, name
