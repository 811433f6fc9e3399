"""The time convention, noising, loss and training sigma sampling of zwsi.flow."""

from __future__ import annotations

import pytest
import torch

from zwsi.flow import (
    add_noise,
    as_velocity,
    euler_step,
    flow_loss,
    model_time,
    sample_sigmas,
    shift_sigmas,
    velocity,
)
from zwsi.sampling import sample


def _pair(seed: int = 0, shape: tuple[int, ...] = (3, 16, 1, 4, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_noise_endpoints_and_model_time() -> None:
    x0, eps = _pair()
    assert torch.equal(add_noise(x0, eps, torch.zeros(3)), x0)  # sigma 0 is data
    assert torch.equal(add_noise(x0, eps, torch.ones(3)), eps)  # sigma 1 is noise
    mid = add_noise(x0, eps, torch.tensor([0.0, 0.25, 1.0]))
    torch.testing.assert_close(mid[1], 0.75 * x0[1] + 0.25 * eps[1])
    assert torch.equal(model_time(torch.tensor([1.0, 0.3, 0.0])), torch.tensor([0.0, 0.7, 1.0]))


@pytest.mark.parametrize("sigma, sigma_next", [(1.0, 0.0), (1.0, 0.6), (0.7, 0.2), (0.3, 0.0)])
def test_one_euler_step_along_true_velocity_lands_on_the_path(sigma: float, sigma_next: float) -> None:
    x0, eps = _pair(1)
    x = add_noise(x0, eps, torch.full((3,), sigma))
    x_next = euler_step(x, velocity(x0, eps), sigma, sigma_next)
    torch.testing.assert_close(x_next, add_noise(x0, eps, torch.full((3,), sigma_next)), atol=1e-6, rtol=0)


def test_shift_matches_zimage_formula_and_keeps_endpoints() -> None:
    s = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_sigmas(s, 3.0), torch.tensor([0.0, 0.75, 1.0], dtype=torch.float64))
    assert torch.equal(shift_sigmas(s, 1.0), s)
    with pytest.raises(ValueError, match="shift must be > 0, got -1"):
        shift_sigmas(s, -1.0)


def test_flow_loss_is_zero_for_the_oracle_and_equals_mse_otherwise() -> None:
    x0, eps = _pair(2)
    sigma = torch.tensor([0.1, 0.5, 0.9])

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # recovers x0 - eps from x_sigma and t: x = t x0 + (1 - t) eps
        assert torch.allclose(t, 1 - sigma)
        return velocity(x0, eps)

    assert flow_loss(oracle, x0, sigma, eps=eps).item() == 0.0
    zero = flow_loss(lambda x, t: torch.zeros_like(x), x0, sigma, eps=eps)
    torch.testing.assert_close(zero, ((x0 - eps) ** 2).mean())
    per_sample = ((x0 - eps) ** 2).flatten(1).mean(1)
    w = torch.tensor([1.0, 0.0, 2.0])
    weighted = flow_loss(lambda x, t: torch.zeros_like(x), x0, sigma, eps=eps, weights=w)
    torch.testing.assert_close(weighted, (per_sample * w).mean())


def test_flow_loss_on_lists_of_unequal_shapes_weights_samples_equally() -> None:
    a0, ae = _pair(3, (16, 1, 2, 2))
    b0, be = _pair(4, (16, 1, 6, 4))
    loss = flow_loss(lambda xs, t: [torch.zeros_like(x) for x in xs], [a0, b0], torch.tensor([0.2, 0.8]), eps=[ae, be])
    expected = (((a0 - ae) ** 2).mean() + ((b0 - be) ** 2).mean()) / 2
    torch.testing.assert_close(loss, expected)


def test_flow_loss_draws_seeded_noise_and_backpropagates() -> None:
    x0, _ = _pair(5)
    weight = torch.nn.Parameter(torch.tensor(0.5))
    loss1 = flow_loss(lambda x, t: weight * x, x0, torch.full((3,), 0.5), generator=torch.Generator().manual_seed(7))
    loss2 = flow_loss(lambda x, t: weight * x, x0, torch.full((3,), 0.5), generator=torch.Generator().manual_seed(7))
    assert loss1.item() == loss2.item()
    loss1.backward()
    assert weight.grad is not None and weight.grad.abs().item() > 0


def test_flow_loss_rejects_bad_shapes() -> None:
    x0, eps = _pair()
    with pytest.raises(ValueError, match=r"sigma must have shape \(3,\).*got \(2,\)"):
        flow_loss(lambda x, t: x, x0, torch.zeros(2), eps=eps)
    with pytest.raises(ValueError, match=r"model returned shape \(3, 16\)"):
        flow_loss(lambda x, t: x[:, :, 0, 0, 0], x0, torch.zeros(3), eps=eps)


@pytest.mark.parametrize("method", ["uniform", "logit-normal"])
def test_sample_sigmas_is_seeded_bounded_and_shifted(method: str) -> None:
    a = sample_sigmas(20_000, method=method, generator=torch.Generator().manual_seed(0))
    b = sample_sigmas(20_000, method=method, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (20_000,) and a.dtype == torch.float32
    assert 0.0 <= a.min().item() and a.max().item() <= 1.0
    assert abs(a.mean().item() - 0.5) < 0.01  # both are symmetric about 0.5 without shift
    shifted = sample_sigmas(20_000, method=method, shift=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, shift_sigmas(a, 3.0))
    assert shifted.mean().item() > 0.6  # the shift moves training time towards noise


def test_sample_sigmas_distributions() -> None:
    u = sample_sigmas(50_000, generator=torch.Generator().manual_seed(1))
    assert abs((u < 0.25).float().mean().item() - 0.25) < 0.01
    ln = sample_sigmas(50_000, method="logit-normal", loc=0.5, scale=1.0, generator=torch.Generator().manual_seed(1))
    logits = torch.logit(ln.double())
    assert abs(logits.mean().item() - 0.5) < 0.02 and abs(logits.std().item() - 1.0) < 0.02


def test_sample_sigmas_rejects_unknown_method() -> None:
    with pytest.raises(ValueError, match=r"method = 'cosine', which has to be one of \['uniform', 'logit-normal'\]"):
        sample_sigmas(4, method="cosine")


# ---- x-prediction (JiT): the model outputs x0, training and sampling see a velocity ---------------------------
def test_sample_prediction_velocity_is_hand_computed_and_clipped_at_min_sigma() -> None:
    x0_hat = torch.tensor([[1.0], [1.0]])

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0_hat

    v = as_velocity(model, "sample")(torch.tensor([[2.0], [2.0]]), torch.tensor([0.5, 0.99]))
    # sigma 0.5: (1 - 2) / 0.5 = -2; sigma 0.01 is clipped to 0.05: (1 - 2) / 0.05 = -20
    assert torch.allclose(v, torch.tensor([[-2.0], [-20.0]]))
    assert as_velocity(model, "velocity") is model


def test_sample_prediction_of_the_oracle_gives_zero_loss_and_sampling_lands_on_x0() -> None:
    g = torch.Generator().manual_seed(0)
    x0 = [torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, 1, 2, 8, generator=g)]
    eps = [torch.randn(x.shape, generator=g) for x in x0]
    sigma = torch.tensor([0.3, 0.8])

    def oracle(x: list[torch.Tensor], t: torch.Tensor) -> list[torch.Tensor]:
        return [a.clone() for a in x0]

    assert flow_loss(as_velocity(oracle, "sample"), x0, sigma, eps=eps).item() < 1e-10
    out = sample(as_velocity(oracle, "sample"), eps, num_steps=8, shift=3.0)
    for o, a in zip(out, x0):
        assert torch.allclose(o, a, atol=1e-5)


def test_as_velocity_rejects_unknown_prediction_and_bad_min_sigma() -> None:
    with pytest.raises(ValueError, match=r"prediction = 'epsilon'.*\['velocity', 'sample'\]"):
        as_velocity(lambda x, t: x, "epsilon")
    with pytest.raises(ValueError, match="min_sigma must be in"):
        as_velocity(lambda x, t: x, "sample", min_sigma=0.0)
