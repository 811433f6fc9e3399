"""Attention backends: agreement on packed layouts, explicit/logged/overridable choice, layout validation."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from tests.zwsi.model.model_testing import randn
from zwsi.model import attention as attn_mod
from zwsi.model.attention import AttentionLayout, attention, resolve_backend

CPU = torch.device("cpu")

LAYOUTS = {
    "single": AttentionLayout.block_diagonal([37]),
    "block_diagonal_equal": AttentionLayout.block_diagonal([16, 16, 16]),
    "block_diagonal_unequal": AttentionLayout.block_diagonal([5, 32, 17, 32]),
    # two samples with the cached-context mask: [target 8 | context+report 12] and [target 4 | rest 6]
    "cached_context": AttentionLayout([(0, 8), (8, 20), (20, 24), (24, 30)], [(0, 20), (8, 20), (20, 30), (24, 30)]),
}


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """A plain softmax per query block, in float64."""
    out = torch.empty_like(q, dtype=torch.float64)
    for (qs, qe), (ks, ke) in zip(layout.q_bounds, layout.k_bounds):
        qb, kb, vb = (x.double().transpose(0, 1) for x in (q[qs:qe], k[ks:ke], v[ks:ke]))  # (H, L, Dh)
        weights = torch.softmax(qb @ kb.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        out[qs:qe] = (weights @ vb).transpose(0, 1)
    return out


@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("backend", ["sdpa", "sdpa_masked", "math"])
def test_cpu_backends_equal_a_plain_softmax_reference(backend, layout_name):
    layout = LAYOUTS[layout_name]
    q, k, v = (randn(layout.total, 3, 16, seed=s) * 2 for s in (1, 2, 3))
    got = attention(q, k, v, layout, backend)
    assert got.shape == q.shape and got.dtype == q.dtype
    torch.testing.assert_close(got.double(), _reference(q, k, v, layout), rtol=1e-5, atol=1e-5)


def test_cpu_backends_agree_on_gradients():
    layout = LAYOUTS["cached_context"]
    grads = []
    for backend in ("sdpa", "sdpa_masked", "math"):
        q, k, v = (randn(layout.total, 2, 8, seed=s).requires_grad_() for s in (4, 5, 6))
        (attention(q, k, v, layout, backend) ** 2).sum().backward()
        grads.append(torch.cat([q.grad, k.grad, v.grad]))
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[2], rtol=1e-5, atol=1e-6)


def test_choice_is_argument_then_env_then_default_and_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(attn_mod, "_logged_choices", set())
    monkeypatch.delenv("ZWSI_ATTENTION", raising=False)
    with caplog.at_level(logging.INFO, logger="zwsi.model.attention"):
        assert resolve_backend(None, CPU) == "sdpa"
        monkeypatch.setenv("ZWSI_ATTENTION", "math")
        assert resolve_backend(None, CPU) == "math"
        assert resolve_backend("sdpa_masked", CPU) == "sdpa_masked"
    assert "attention backend sdpa on cpu (default)" in caplog.text
    assert "attention backend math on cpu (env ZWSI_ATTENTION)" in caplog.text
    assert "attention backend sdpa_masked on cpu (argument)" in caplog.text


def test_bad_backend_names_raise(monkeypatch):
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash' \(from argument\); expected one of \['flash_attn'"):
        resolve_backend("flash", CPU)
    monkeypatch.setenv("ZWSI_ATTENTION", "cudnn")
    with pytest.raises(ValueError, match=r"unknown attention backend 'cudnn' \(from env ZWSI_ATTENTION\)"):
        resolve_backend(None, CPU)
    for name in ("varlen", "flash_attn"):
        with pytest.raises(ValueError, match=rf"attention backend '{name}' \(from argument\) needs a CUDA device, got 'cpu'"):
            resolve_backend(name, CPU)


def test_layout_validation():
    with pytest.raises(ValueError, match="consecutive and non-empty"):
        AttentionLayout([(0, 4), (5, 8)], [(0, 4), (5, 8)])
    with pytest.raises(ValueError, match=r"key ranges \[\(0, 9\)\] exceed the sequence length 8"):
        AttentionLayout([(0, 8)], [(0, 9)])
    with pytest.raises(ValueError, match="packed sequence has 7 tokens but the layout covers 8"):
        attention(*(randn(7, 1, 4, seed=0) for _ in range(3)), AttentionLayout.block_diagonal([8]), "sdpa")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["varlen", "flash_attn", "sdpa", "sdpa_masked"])
def test_cuda_backends_agree_with_the_reference(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if backend == "flash_attn" and not attn_mod.flash_attn_available():
        pytest.skip("flash-attn is not installed")
    layout = LAYOUTS["cached_context"]
    q, k, v = (randn(layout.total, 4, 64, seed=s).cuda().bfloat16() for s in (1, 2, 3))
    got = attention(q, k, v, layout, backend)
    torch.testing.assert_close(got.double().cpu(), _reference(q.cpu(), k.cpu(), v.cpu(), layout), rtol=2e-2, atol=2e-2)
