"""On CUDA: every attention backend against the math reference on packed, unequal-length batches (bf16 and fp32,
outputs and gradients); the full forward in bf16 against fp32 on a small config; the sequence forward with context
against the CPU; a small slide generated on CUDA identical for batch sizes 1 and 4.

Marked `gpu` (the default run excludes them; the GPU kit, benchmarks/gpu/run.py, runs them first) and skipped
without CUDA.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.zwsi.model.model_testing import randn, random_model, relative_error, window_sample
from zwsi.model import S3DiTConfig
from zwsi.model import attention as attn_mod
from zwsi.model.attention import AttentionLayout, attention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
# Packed layouts of unequal lengths: independent samples, and two samples under the cached-context mask
# ([target 96 | context 40] and [target 33 | context 71]: context queries do not see their target's keys).
LAYOUTS = {
    "unequal": AttentionLayout.block_diagonal([37, 128, 5, 300, 64]),
    "cached_context_unequal": AttentionLayout([(0, 96), (96, 136), (136, 169), (169, 240)],
                                              [(0, 136), (96, 136), (136, 240), (169, 240)]),
}
HALF_ONLY = ("varlen", "flash_attn")  # fp16/bf16 kernels
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def _skip_unavailable(backend: str, dtype: torch.dtype) -> None:
    if backend in HALF_ONLY and dtype == torch.float32:
        pytest.skip(f"{backend} runs fp16/bf16 only")
    if backend == "flash_attn" and not attn_mod.flash_attn_available():
        pytest.skip("flash-attn is not installed")
    if backend == "varlen" and importlib.util.find_spec("torch.nn.attention.varlen") is None:
        pytest.skip(f"torch {torch.__version__} has no torch.nn.attention.varlen")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("layout_name", list(LAYOUTS))
@pytest.mark.parametrize("backend", ["sdpa", "sdpa_masked", "varlen", "flash_attn"])
def test_every_backend_equals_the_math_reference_with_gradients(backend, layout_name, dtype):
    _skip_unavailable(backend, dtype)
    layout = LAYOUTS[layout_name]
    heads, head_dim = 4, 128  # Turbo's head_dim
    leaves = [randn(layout.total, heads, head_dim, seed=s).to(CUDA, dtype).requires_grad_() for s in (1, 2, 3)]
    weight = randn(layout.total, heads, head_dim, seed=4).to(CUDA, dtype)
    results = {}
    for name in (backend, "math"):
        out = attention(*leaves, layout, name)
        (out.float() * weight.float()).sum().backward()
        results[name] = (out.detach(), [x.grad.clone() for x in leaves])
        for x in leaves:
            x.grad = None
    (out, grads), (ref, ref_grads) = results[backend], results["math"]
    assert out.shape == ref.shape and out.dtype == dtype
    assert relative_error(out, ref) < TOL[dtype], f"{backend} output differs from math by {relative_error(out, ref):.2e}"
    for g, r, what in zip(grads, ref_grads, "qkv"):
        assert relative_error(g, r) < 2 * TOL[dtype], f"{backend} d{what} differs from math by {relative_error(g, r):.2e}"


SMALL = S3DiTConfig(dim=256, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=32,
                    axes_dims=(32, 48, 48))  # Turbo's head geometry (128 = 32 + 48 + 48) at a small width


def _batch(device: torch.device, dtype: torch.dtype) -> list:
    """Three windows of unequal length: two context strips + overview; one strip under the cached-context mask; no
    context and an empty report."""
    batch = [window_sample(0, 0.2, 7), window_sample(10, 0.9, 40, contexts=1, context_attends_target=False),
             window_sample(20, 0.5, 0, contexts=0)]
    for s in batch:
        s.target.latents = s.target.latents.to(device, dtype)
        s.report = s.report.to(device, dtype)
        for c in s.contexts:
            c.latents = c.latents.to(device, dtype)
    return batch


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
def test_full_forward_in_bf16_is_close_to_fp32_on_a_small_config(backend):
    _skip_unavailable(backend, torch.bfloat16)
    fp32 = random_model(SMALL, seed=3).to(CUDA)
    bf16 = random_model(SMALL, seed=3, attention_backend=backend).to(CUDA, torch.bfloat16)
    fp32.attention_backend = "sdpa"
    with torch.no_grad():
        want = fp32(_batch(CUDA, torch.float32))
        got = bf16(_batch(CUDA, torch.bfloat16))
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16 and g.shape == w.shape
        assert relative_error(g, w) < 3e-2, f"bf16 ({backend}) vs fp32: relative error {relative_error(g, w):.2e}"


def test_sequence_forward_with_context_on_cuda_equals_the_cpu_and_each_sample_alone():
    cpu_model = random_model(seed=1)
    with torch.no_grad():
        want = cpu_model(_batch(torch.device("cpu"), torch.float32))
    cuda_model = random_model(seed=1).to(CUDA)
    for backend in ("sdpa", "sdpa_masked", "math"):
        cuda_model.attention_backend = backend
        with torch.no_grad():
            got = cuda_model(_batch(CUDA, torch.float32))
            alone = [cuda_model([s])[0] for s in _batch(CUDA, torch.float32)]
        for g, a, w in zip(got, alone, want):
            assert g.device.type == "cuda"
            torch.testing.assert_close(g.cpu(), w, rtol=1e-4, atol=1e-5, msg=f"{backend}: CUDA vs CPU")
            torch.testing.assert_close(g, a, rtol=1e-5, atol=1e-5, msg=f"{backend}: packed vs alone")
    for backend in ("sdpa", "varlen"):
        if backend == "varlen" and importlib.util.find_spec("torch.nn.attention.varlen") is None:
            continue
        half = random_model(seed=1, attention_backend=backend).to(CUDA, torch.bfloat16)
        with torch.no_grad():
            got = half(_batch(CUDA, torch.bfloat16))
        for g, w in zip(got, want):
            assert relative_error(g.cpu(), w) < 3e-2, f"bf16 {backend} on CUDA vs fp32 CPU: {relative_error(g.cpu(), w):.2e}"


def test_a_small_slide_generated_on_cuda_is_identical_for_batch_sizes_1_and_4(tmp_path: Path):
    from benchmarks.random_pipeline import random_pipeline
    from slide_io import open_slide
    from zwsi.generate.pipeline import SlideGenerator

    report = "Invasive ductal carcinoma, Nottingham grade 2. Margins negative. Lymphovascular invasion not identified."
    base = random_pipeline("tiny", overrides={"device": "cuda", "compression": "deflate", "tile_size": 64},
                           folder=tmp_path / "encoder")
    assert base.device.type == "cuda"
    levels = {}
    for batch_size in (1, 4):
        gen = SlideGenerator(base.transformer, base.vae, base.text_encoder,
                             config=dataclasses.replace(base.config, batch_size=batch_size), shift=base.shift,
                             model_sha256=base.model_sha256, name=base.name)
        out = tmp_path / f"b{batch_size}.tiff"
        result = gen.generate(report, 380.0, 250.0, 2.0, seed=3, steps=2, out=out, progress=False)
        assert sum(result.model_windows.values()) > 1  # several windows, so batch 4 really batches them
        with open_slide(out) as slide:
            levels[batch_size] = [slide.read_region((0, 0), k, slide.level_dimensions[k], as_array=True)
                                  for k in range(slide.level_count)]
    assert len(levels[1]) == len(levels[4]) >= 2
    for k, (one, four) in enumerate(zip(levels[1], levels[4])):
        diff = np.abs(one.astype(int) - four.astype(int))
        assert one.std() > 1, "a constant image: the pipeline did not generate"
        assert diff.max() == 0, f"level {k}: batch 1 and batch 4 differ in {np.count_nonzero(diff)} values " \
                                f"(max {diff.max()})"
