"""The general sequence forward: packing, per-token modulation, the cached-context mask, input validation."""

from __future__ import annotations

import pytest
import torch

from tests.zwsi.model.model_testing import randn, random_model, relative_error, window_sample
from zwsi.model import ImageSegment, grid_positions, report_token_count, t2i_sample
from zwsi.model.sequence import pack_batch, patchify, unpatchify


@pytest.fixture(scope="module")
def model():
    return random_model(seed=1)


def test_patchify_round_trip_and_layout():
    lat = randn(16, 2, 6, 4, seed=0)
    tokens = patchify(lat, 2, 1)
    assert tokens.shape == (2 * 3 * 2, 64)
    # token (f=1, i=2, j=0), feature ((pf*2 + ph)*2 + pw)*16 + c with ph=1, pw=0, c=5
    assert tokens[(1 * 3 + 2) * 2 + 0, (1 * 2 + 0) * 16 + 5] == lat[5, 1, 2 * 2 + 1, 0]
    assert torch.equal(unpatchify(tokens, tuple(lat.shape), 2, 1), lat)


def test_positions_helpers():
    assert report_token_count(0) == 0 and report_token_count(7) == 32 and report_token_count(64) == 64
    pos = grid_positions(33, 2, 3, h0=-1.0, w0=0.5, step=2.0)
    assert pos.tolist() == [[33, -1, 0.5], [33, -1, 2.5], [33, -1, 4.5], [33, 1, 0.5], [33, 1, 2.5], [33, 1, 4.5]]
    sample = t2i_sample(randn(16, 1, 4, 6, seed=0), 0.5, randn(40, 32, seed=1))
    assert sample.target.positions[0].tolist() == [65, 0, 0] and sample.target.positions[-1].tolist() == [65, 1, 2]


def test_packed_batch_equals_each_sample_alone(model):
    batch = [window_sample(0, 0.2, 7), window_sample(10, 0.9, 40, contexts=1), window_sample(20, 0.5, 0, contexts=0)]
    with torch.no_grad():
        packed = model(batch)
        alone = [model([s])[0] for s in batch]
    for p, a in zip(packed, alone):
        torch.testing.assert_close(p, a, rtol=1e-5, atol=1e-5)


def test_packed_and_padded_dense_mask_backends_agree(model):
    batch = [window_sample(0, 0.2, 7), window_sample(10, 0.9, 40, contexts=1, context_attends_target=False)]
    with torch.no_grad():
        model.attention_backend = "sdpa_masked"  # one padded-square call with a dense mask
        dense = model(batch)
        model.attention_backend = "sdpa"  # per block, no mask
        packed = model(batch)
        model.attention_backend = None
    for p, d in zip(packed, dense):
        torch.testing.assert_close(p, d, rtol=1e-5, atol=1e-5)


def test_forward_t2i_equals_forward_of_t2i_samples(model):
    x = [randn(16, 1, 12, 10, seed=1), randn(16, 1, 8, 8, seed=2)]
    t = torch.tensor([0.3, 0.7])
    caps = [randn(7, 32, seed=3), randn(33, 32, seed=4)]
    with torch.no_grad():
        a = model.forward_t2i(x, t, caps)
        b = model([t2i_sample(xi, ti, ci) for xi, ti, ci in zip(x, t, caps)])
    assert all(torch.equal(ai, bi) for ai, bi in zip(a, b))


def test_contexts_change_the_target_prediction_and_are_modulated_as_clean(model):
    with torch.no_grad():
        with_ctx = model([window_sample(0, 0.3, 7)])[0]
        without = model([window_sample(0, 0.3, 7, contexts=0)])[0]
        packed = pack_batch([window_sample(0, 0.3, 7)], model.config)
    assert relative_error(with_ctx, without) > 1e-3
    # two modulations: the target's t and t = 1 for the context tokens (and none other)
    assert sorted(packed.cond_t.tolist()) == pytest.approx([0.3, 1.0])
    is_clean = packed.cond_t[packed.img_cond] == 1.0
    assert is_clean.tolist() == [False] * 32 + [True] * (32 + 32)  # target (30 + 2 pads), then 12 + 20 pads, 9 + 23 pads


def test_cached_context_mask_makes_report_and_context_states_independent_of_the_target(model):
    def hidden(seed: int, t: float, cached: bool):
        s = window_sample(0, t, 7, report_attends_target=not cached, context_attends_target=not cached)
        s.target = ImageSegment(randn(16, 1, 12, 10, seed=seed), s.target.positions)
        with torch.no_grad():
            x, _, packed = model.forward_hidden([s])
        return x[~packed.unified_is_target], model([s])[0]

    ctx_a, pred_a = hidden(seed=100, t=0.1, cached=True)
    ctx_b, pred_b = hidden(seed=200, t=0.7, cached=True)  # another target and another step
    torch.testing.assert_close(ctx_a, ctx_b, rtol=0, atol=0)
    assert relative_error(pred_a, pred_b) > 1e-2  # the target itself still changes
    full_a, full_pred = hidden(seed=100, t=0.1, cached=False)
    full_b, _ = hidden(seed=200, t=0.7, cached=False)
    assert relative_error(full_a, full_b) > 1e-3  # without the mask the context states do depend on the target
    assert relative_error(pred_a, full_pred) > 1e-4  # and the mask changes the prediction


def test_cached_context_mask_layout(model):
    packed = pack_batch([window_sample(0, 0.3, 7, report_attends_target=False, context_attends_target=False)], model.config)
    mask = packed.unified_layout.dense_mask(torch.device("cpu"))
    is_target = packed.unified_is_target
    assert mask[is_target].all()  # target queries see every token
    assert not mask[~is_target][:, is_target].any()  # report/context queries see no target key
    assert mask[~is_target][:, ~is_target].all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: setattr(s.target, "latents", randn(4, 1, 12, 10, seed=0)), r"sample 0 target latents must be \(16, F, H, W\)"),
        (lambda s: setattr(s.contexts[0], "latents", randn(16, 1, 12, 5, seed=0)), r"context 0 latents \(16, 1, 12, 5\): .* H and W of 2"),
        (lambda s: setattr(s.target, "positions", torch.zeros(29, 3)), r"target positions must have shape \(30, 3\) .* got \(29, 3\)"),
        (lambda s: setattr(s, "report", randn(5, 31, seed=0)), r"report must be \(L, 32\), got shape \(5, 31\)"),
    ],
)
def test_bad_samples_raise_naming_the_segment(model, mutate, message):
    s = window_sample(0, 0.3, 7)
    mutate(s)
    with pytest.raises(ValueError, match=message):
        model([s])


def test_empty_batch_and_mismatched_t2i_lengths_raise(model):
    with pytest.raises(ValueError, match="the batch is empty"):
        model([])
    with pytest.raises(ValueError, match=r"need as many t \(1\) and captions \(2\) as latents \(2\)"):
        model.forward_t2i([randn(16, 1, 4, 4, seed=0)] * 2, torch.tensor([0.5]), [randn(3, 32, seed=1)] * 2)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for enabled in (False, True):
        model = random_model(seed=2).train()
        model.enable_gradient_checkpointing(enabled)
        out = model([window_sample(0, 0.3, 7), window_sample(10, 0.6, 0, contexts=1, context_attends_target=False)])
        sum((o**2).mean() for o in out).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.slow
def test_compiled_blocks_equal_eager_without_graph_breaks():
    """Regional compilation (each block compiled, as the GPU benchmark does): real-arithmetic RoPE, no logging inside."""
    import torch._dynamo

    eager, compiled = random_model(seed=4), random_model(seed=4)
    for blocks in (compiled.noise_refiner, compiled.context_refiner, compiled.layers):
        for block in blocks:
            block.compile(fullgraph=True)  # fullgraph: a graph break would raise
    torch._dynamo.reset()
    batch = [window_sample(0, 0.3, 7), window_sample(10, 0.6, 40, contexts=1, context_attends_target=False)]
    with torch.no_grad():
        for got, expected in zip(compiled(batch), eager(batch)):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
