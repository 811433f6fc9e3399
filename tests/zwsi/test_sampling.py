"""Z-Image's Euler sampler: the exact Turbo schedule, landing on x0 with an oracle velocity, and CFG."""

from __future__ import annotations

import pytest
import torch

from zwsi.sampling import flow_sigmas, guide, sample, seeded_noise

# zimage-architecture.md §5.3, the exact Turbo schedule (N = 8, shift 3.0).
TURBO_SIGMAS = [1.0, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0.0]
TURBO_T = [0.0, 0.045455, 0.1, 0.166667, 0.25, 0.357143, 0.5, 0.7]


def test_turbo_schedule_matches_the_reference_table() -> None:
    sigmas = flow_sigmas(8, 3.0)
    assert sigmas.dtype == torch.float32
    # the table is printed to 6 decimals; the closed form is 3s/(1+2s) with s = 1 - i/8
    exact = [3 * (1 - i / 8) / (1 + 2 * (1 - i / 8)) for i in range(8)] + [0.0]
    torch.testing.assert_close(sigmas.double(), torch.tensor(exact, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(sigmas.double(), torch.tensor(TURBO_SIGMAS, dtype=torch.float64), atol=5e-7, rtol=0)


def test_schedule_matches_diffusers_scheduler_as_zimage_pipeline_uses_it() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    for steps in (1, 4, 8, 9, 28, 50):
        sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
        # ZImagePipeline (diffusers 0.42) passes sigmas = linspace(1, 1/N, N): get_default_z_image_sigmas
        sched.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist())
        torch.testing.assert_close(flow_sigmas(steps, 3.0), sched.sigmas.float(), atol=1e-6, rtol=0)
    # The scheduler alone (set_timesteps(8) with no sigmas) spaces linearly down to its sigma_min: a different,
    # non-Z-Image schedule. Pin that difference so nobody swaps one for the other.
    plain = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    plain.set_timesteps(8)
    assert abs(float(plain.sigmas[7]) - 0.3) > 0.25


def test_model_is_called_at_turbo_times() -> None:
    seen: list[float] = []

    def record(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (2,) and t.dtype == torch.float32
        seen.append(float(t[0]))
        return torch.zeros_like(x)

    sample(record, torch.zeros(2, 16, 1, 4, 4))
    assert seen == pytest.approx(TURBO_T, abs=1e-6)


def _oracle(x0: torch.Tensor | list[torch.Tensor]):
    """The exact velocity toward x0 from the current x and t: eps = (x - t x0) / (1 - t), v = x0 - eps."""

    def velocity(x, t):
        if isinstance(x, list):
            return [velocity(xi.unsqueeze(0), ti.reshape(1))[0] for xi, ti in zip(x, t)]
        target = torch.stack(x0) if isinstance(x0, list) else x0
        tt = t.double().reshape(-1, *([1] * (x.dim() - 1)))
        eps = (x.double() - tt * target.double()) / (1 - tt)
        return (target.double() - eps).float()

    return velocity


@pytest.mark.parametrize("steps", [1, 2, 3, 8, 17, 50])
def test_sampler_lands_on_x0_with_the_exact_velocity(steps: int) -> None:
    x0 = torch.randn(3, 16, 1, 8, 8, generator=torch.Generator().manual_seed(steps))
    noise = seeded_noise([1, 2, 3], (16, 1, 8, 8))
    out = sample(_oracle(x0), noise, num_steps=steps)
    torch.testing.assert_close(out, x0, atol=2e-6, rtol=0)


def test_sampler_on_lists_of_unequal_shapes() -> None:
    x0 = [torch.randn(16, 1, 4, 6), torch.randn(16, 1, 8, 2)]

    def oracle(xs, t):
        return [_oracle(a.unsqueeze(0))(x.unsqueeze(0), ti.reshape(1))[0] for a, x, ti in zip(x0, xs, t)]

    out = sample(oracle, [torch.randn(16, 1, 4, 6), torch.randn(16, 1, 8, 2)])
    assert isinstance(out, list)
    for o, a in zip(out, x0):
        torch.testing.assert_close(o, a, atol=2e-6, rtol=0)


def test_seeded_noise_depends_only_on_the_seed() -> None:
    batch = seeded_noise([11, 12, 13], (16, 1, 4, 4))
    alone = seeded_noise([12], (16, 1, 4, 4))
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(alone[0], torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(12)))
    assert not torch.equal(batch[0], batch[1])


def test_guide_formula_and_normalisation() -> None:
    pos, neg = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 1.0])
    torch.testing.assert_close(guide(pos, neg, 2.0), torch.tensor([7.0, 10.0]))
    capped = guide(pos, neg, 2.0, normalization=1.5)  # |pred| = 12.2 > 1.5 * |pos| = 7.5 -> rescaled to 7.5
    torch.testing.assert_close(torch.linalg.vector_norm(capped), torch.tensor(7.5))
    torch.testing.assert_close(capped / capped.norm(), torch.tensor([7.0, 10.0]) / torch.tensor([7.0, 10.0]).norm())
    torch.testing.assert_close(guide(pos, neg, 2.0, normalization=3.0), torch.tensor([7.0, 10.0]))  # under the cap


def test_cfg_combines_positive_and_negative_and_truncates_late_steps() -> None:
    calls: dict[str, list[float]] = {"pos": [], "neg": []}

    def constant(name: str, value: float):
        def model(x, t):
            calls[name].append(round(float(t[0]), 6))
            return torch.full_like(x, value)

        return model

    noise = torch.zeros(1, 16, 1, 2, 2)
    out = sample(constant("pos", 1.0), noise, guidance_scale=3.0, uncond_model=constant("neg", 0.5), cfg_truncation=0.4)
    # guided velocity 1 + 3 (1 - 0.5) = 2.5 while t <= 0.4 (steps t = 0 .. 0.357143), plain 1.0 after
    sig = flow_sigmas(8, 3.0)
    t = 1 - sig[:-1]
    v = torch.where(t <= 0.4, 2.5, 1.0).double()
    expected = float(((sig[:-1] - sig[1:]).double() * v).sum())
    torch.testing.assert_close(out, torch.full_like(noise, expected), atol=1e-6, rtol=0)
    assert len(calls["pos"]) == 8
    assert calls["neg"] == pytest.approx(TURBO_T[:6], abs=1e-6)  # no unconditional call once truncated


def test_cfg_needs_the_unconditional_model_and_a_valid_schedule() -> None:
    with pytest.raises(ValueError, match="guidance_scale = 4.0 > 0 needs uncond_model"):
        sample(lambda x, t: x, torch.zeros(1, 4), guidance_scale=4.0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(lambda x, t: x, torch.zeros(1, 4), sigmas=torch.tensor([1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="model returned 1 predictions for a batch of 2"):
        sample(lambda x, t: x[:1], torch.zeros(2, 4))


def test_sampler_equals_diffusers_zimage_pipeline_with_cfg_truncation_and_normalisation() -> None:
    """Our loop reproduces ZImagePipeline's (diffusers 0.42) denoising on the same transformer, and so does the
    packed S3-DiT with the same weights driven through `sequence_denoiser` and Z-Image's own t2i sequence."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel

    from zwsi.model.config import S3DiTConfig
    from zwsi.model.s3dit import S3DiT
    from zwsi.model.sequence import t2i_sample
    from zwsi.sampling import sequence_denoiser

    config = S3DiTConfig.preset("tiny")
    torch.manual_seed(0)
    reference = ZImageTransformer2DModel(**config.to_dict()).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
    pipe = ZImagePipeline(scheduler=scheduler, vae=None, text_encoder=None, tokenizer=None, transformer=reference)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(7, 32, generator=gen), torch.randn(3, 32, generator=gen)
    noise = torch.randn(1, 16, 8, 8, generator=gen)
    cfg = dict(guidance_scale=2.0, cfg_truncation=0.4, cfg_normalization=1.2)
    expected = pipe(
        prompt_embeds=[pos], negative_prompt_embeds=[neg], height=64, width=64, num_inference_steps=8,
        latents=noise.clone(), output_type="latent", **cfg,
    ).images

    def denoiser(cap: torch.Tensor):
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return torch.stack([o[:, 0] for o in reference(list(x.unsqueeze(2)), t, [cap], return_dict=False)[0]])

        return model

    with torch.no_grad():
        ours = sample(denoiser(pos), noise.clone(), uncond_model=denoiser(neg), **cfg)
        torch.testing.assert_close(ours, expected, atol=2e-6, rtol=0)
        unnormalised = sample(
            denoiser(pos), noise.clone(), uncond_model=denoiser(neg), guidance_scale=2.0, cfg_truncation=0.4
        )
        assert (unnormalised - expected).abs().max() > 1e-3  # the norm cap was active on this run

        s3dit = S3DiT(config).eval()
        s3dit.load_state_dict(reference.state_dict(), strict=True)
        x0 = noise[0].unsqueeze(1)  # (16, 1, 8, 8)
        ours_packed = sample(
            sequence_denoiser(s3dit, [t2i_sample(x0, 0.0, pos)]), [x0.clone()],
            uncond_model=sequence_denoiser(s3dit, [t2i_sample(x0, 0.0, neg)]), **cfg,
        )[0]
    torch.testing.assert_close(ours_packed[:, 0], expected[0], atol=1e-5, rtol=1e-5)
