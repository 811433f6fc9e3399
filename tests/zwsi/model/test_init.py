"""DiT's from-scratch initialisation of the S3-DiT (adaLN-Zero): what a newly built built-in model starts from."""

from __future__ import annotations

import math

import torch

from zwsi.model import S3DiT, S3DiTConfig
from zwsi.model.sequence import t2i_sample


def _tiny() -> S3DiT:
    torch.manual_seed(0)
    model = S3DiT(S3DiTConfig.preset("tiny"))
    model.initialize_weights()
    return model


def test_adaln_zero_blocks_are_the_identity_and_the_first_prediction_is_zero() -> None:
    model = _tiny()
    for block in [*model.noise_refiner, *model.layers]:
        assert torch.count_nonzero(block.adaLN_modulation[0].weight) == 0  # gates tanh(0) = 0: identity blocks
    latents = torch.randn(16, 1, 8, 8)
    out = model([t2i_sample(latents, 0.3, torch.randn(5, 32))])[0]
    assert out.shape == latents.shape and torch.count_nonzero(out) == 0


def test_linears_are_xavier_and_timestep_mlp_is_normal_002() -> None:
    model = _tiny()
    w = model.layers[0].attention.to_q.weight
    bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound  # uniform(-bound, bound), xavier's
    assert torch.count_nonzero(model.cap_embedder[1].bias) == 0
    t = model.t_embedder.mlp[0].weight
    assert abs(t.std().item() - 0.02) < 0.002 and abs(t.mean().item()) < 0.002


def test_the_initialised_model_learns_one_step_moves_the_output() -> None:
    model = _tiny()
    latents = torch.randn(16, 1, 8, 8)
    sample = t2i_sample(latents, 0.3, torch.randn(5, 32))
    loss = ((model([sample])[0] - latents) ** 2).mean()
    loss.backward()
    assert model.all_final_layer["2-1"].linear.weight.grad.abs().sum() > 0  # the zero final layer gets gradient
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert torch.count_nonzero(model([sample])[0]) > 0
