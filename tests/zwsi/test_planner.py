"""The slide planner against DESIGN §3: ladder, grids, phases, neighbours, registered positions, seeds, tissue."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zwsi.planner import (
    PHASES,
    PlanConfig,
    build_sample,
    context_specs,
    magnification_ladder,
    neighbours,
    phase_batches,
    phase_offsets,
    plan_slide,
    tissue_windows,
    window_noise,
    window_seed,
)

# 8-token windows (16 latents, 128 px), 2-token strips, 1 parent token of overview margin, factor 4.
CFG = PlanConfig(window_tokens=8, context_tokens=2, overview_margin=1, factor=4)
S = 4


@pytest.fixture(scope="module")
def plan():
    # 300 x 380 µm at 0.5 µm/px: level 0 is 600 x 760 px -> 5 x 6 windows of 128 px; levels at 2 and 8 µm/px.
    return plan_slide(300, 380, 0.5, seed=1234, config=CFG)


def coordinate_canvas(plan, level: int) -> np.ndarray:
    """Latents that say where they are: channel 0 = latent row, 1 = latent col, 2 = level, at every latent."""
    h, w = plan.level(level).latent_shape
    canvas = np.zeros((16, h, w), np.float32)
    canvas[0] = np.arange(h)[:, None]
    canvas[1] = np.arange(w)[None, :]
    canvas[2] = level
    return canvas


def test_ladder_is_factor_four_up_to_the_coarsest_mpp() -> None:
    assert magnification_ladder(0.5) == [0.5, 2.0, 8.0]
    assert magnification_ladder(0.25) == [0.25, 1.0, 4.0]
    assert magnification_ladder(8.0) == [8.0]
    assert magnification_ladder(1.0, coarsest_mpp=16.0, factor=2) == [1.0, 2.0, 4.0, 8.0, 16.0]
    with pytest.raises(ValueError, match="need 0 < final_mpp <= coarsest_mpp, got final_mpp=16"):
        magnification_ladder(16.0)


def test_level_canvases_are_whole_windows_covering_the_slide(plan) -> None:
    assert [lv.mpp for lv in plan.levels] == [0.5, 2.0, 8.0]
    assert [lv.slide_pixels for lv in plan.levels] == [(600, 760), (150, 190), (38, 48)]
    assert [lv.grid for lv in plan.levels] == [(5, 6), (2, 2), (1, 1)]
    assert plan.level(0).latent_shape == (80, 96) and plan.level(0).tokens == (40, 48)
    assert plan.generation_order() == [2, 1, 0] and plan.coarsest == 2
    for child, parent in zip(plan.levels[:-1], plan.levels[1:]):
        assert child.tokens[0] * CFG.token_px >= child.slide_pixels[0]  # the canvas covers the slide
        assert child.tokens[0] - child.slide_pixels[0] / CFG.token_px < CFG.window_tokens  # padding < 1 window
        assert child.tokens[0] <= parent.tokens[0] * S and child.tokens[1] <= parent.tokens[1] * S
    with pytest.raises(ValueError, match="window \\(5, 0\\) is outside level 0's 5x6 grid"):
        plan.window(0, 5, 0)


# DESIGN §3: A sees no neighbour; B left/right; C above, below and the diagonals; D all eight.
DESIGN_NEIGHBOURS = {
    "A": set(),
    "B": {(0, -1), (0, 1)},
    "C": {(-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)},
    "D": {(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)},
}


def test_phase_offsets_are_the_design_table_and_can_be_forced_for_training(plan) -> None:
    for phase, name in enumerate(PHASES):
        assert set(phase_offsets(phase)) == DESIGN_NEIGHBOURS[name]
    # training: window (2, 2) is an A window, but can be given the D pattern (all eight neighbours, then overview)
    w = plan.window(0, 2, 2)
    assert neighbours(plan, w) == []
    assert [s.offset for s in context_specs(plan, w, phase=3)][:-1] == sorted(DESIGN_NEIGHBOURS["D"])
    with pytest.raises(ValueError, match="phase must be 0..3 \\(A..D\\), got 4"):
        phase_offsets(4)


def test_each_phase_sees_exactly_the_design_neighbours_generated_earlier(plan) -> None:
    rows, cols = plan.level(0).grid
    counts = dict.fromkeys(PHASES, 0)
    for w in plan.windows(0):
        name = PHASES[w.phase]
        counts[name] += 1
        assert name == "ABCD"[2 * (w.row % 2) + w.col % 2]
        expected = {(dr, dc) for dr, dc in DESIGN_NEIGHBOURS[name] if 0 <= w.row + dr < rows and 0 <= w.col + dc < cols}
        assert set(neighbours(plan, w)) == expected, (w.row, w.col)
        for dr, dc in neighbours(plan, w):
            assert plan.window(0, w.row + dr, w.col + dc).phase < w.phase  # generated in an earlier phase
        kinds = [s.kind for s in context_specs(plan, w)]
        assert kinds == ["neighbour"] * len(expected) + ["overview"]
    assert counts == {"A": 9, "B": 9, "C": 6, "D": 6}  # 5 rows (3 even), 6 cols (3 even)
    assert sorted(plan.windows(0), key=lambda w: (w.row, w.col)) == sorted(
        sum((plan.windows(0, phase) for phase in range(4)), []), key=lambda w: (w.row, w.col)
    )
    # the coarsest level has no parent: phase A windows there see nothing but the report
    assert context_specs(plan, plan.window(2, 0, 0)) == []


@pytest.mark.parametrize("level", [0, 1])
def test_positions_are_the_true_offsets_of_the_latents_read(plan, level: int) -> None:
    canvases = {lv: coordinate_canvas(plan, lv) for lv in range(3)}

    def read(lv: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
        return canvases[lv][:, rows[0] : rows[1], cols[0] : cols[1]]

    report = torch.zeros(40, 32)  # L = 40 -> Lp = 64: target and neighbours at t = 65, overview at 66
    n, k = CFG.window_tokens, CFG.context_tokens
    for w in plan.windows(level):
        sample = build_sample(plan, w, read, report, window_noise(plan, w))
        oy, ox = w.row * n, w.col * n
        tgt = sample.target.positions
        assert tgt.shape == (n * n, 3) and torch.all(tgt[:, 0] == 65)
        assert torch.equal(tgt[:, 1:].long(), torch.cartesian_prod(torch.arange(n), torch.arange(n)))
        specs = context_specs(plan, w)
        assert len(sample.contexts) == len(specs)
        for spec, ctx in zip(specs, sample.contexts):
            lat, pos = ctx.latents[:, 0], ctx.positions  # (16, h, w), (h/2 * w/2, 3)
            # the token at raster index q has its top-left latent at (2i, 2j) of the segment
            token_rows = lat[0, ::2, ::2].reshape(-1) / 2  # global token row in the level read
            token_cols = lat[1, ::2, ::2].reshape(-1) / 2
            assert torch.all(lat[2] == spec.level)
            if spec.kind == "neighbour":
                assert spec.level == level and torch.all(pos[:, 0] == 65)
                torch.testing.assert_close(pos[:, 1], token_rows - oy, rtol=0, atol=0)
                torch.testing.assert_close(pos[:, 2], token_cols - ox, rtol=0, atol=0)
                # the strip lies in the neighbour window it names, on the side facing the target
                dr, dc = spec.offset
                assert torch.all(torch.div(token_rows, n, rounding_mode="floor") == w.row + dr)
                assert torch.all(torch.div(token_cols, n, rounding_mode="floor") == w.col + dc)
                rel_r, rel_c = pos[:, 1], pos[:, 2]
                assert torch.all((rel_r >= -k) & (rel_r < n + k) & (rel_c >= -k) & (rel_c < n + k))
                assert not torch.any((rel_r >= 0) & (rel_r < n) & (rel_c >= 0) & (rel_c < n))  # never the target
            else:
                assert spec.level == level + 1 and torch.all(pos[:, 0] == 66)
                torch.testing.assert_close(pos[:, 1], (token_rows + 0.5) * S - 0.5 - oy, rtol=0, atol=1e-5)
                torch.testing.assert_close(pos[:, 2], (token_cols + 0.5) * S - 0.5 - ox, rtol=0, atol=1e-5)


def test_overview_maps_parent_token_centres(plan) -> None:
    config = PlanConfig(window_tokens=8, context_tokens=2, overview_margin=0)
    no_margin = plan_slide(300, 380, 0.5, seed=1, config=config)
    for row, col in [(0, 0), (1, 0), (3, 5)]:
        w = no_margin.window(0, row, col)
        (spec,) = [s for s in context_specs(no_margin, w) if s.kind == "overview"]
        # the parent token covering target tokens 0..3 has its centre at 1.5, the next at 5.5; step s = 4
        assert (spec.h0, spec.w0, spec.step) == (1.5, 1.5, 4.0)
        assert spec.token_shape(2) == (2, 2)  # exactly the window's footprint: 8 / 4 parent tokens per side
        assert spec.rows == (row * 2 * 2, (row + 1) * 2 * 2)  # parent latents
    # with the margin the crop grows by one parent token per side, clipped at the canvas edge
    corner = context_specs(plan, plan.window(0, 0, 0))[-1]
    assert (corner.h0, corner.w0, corner.token_shape(2)) == (1.5, 1.5, (3, 3))
    inner = context_specs(plan, plan.window(0, 2, 3))[-1]
    assert (inner.h0, inner.w0, inner.token_shape(2)) == (-2.5, -2.5, (4, 4))


def test_seeds_do_not_depend_on_batching_or_process_count(plan) -> None:
    phase_d = plan.windows(0, 3)
    reference = {(w.row, w.col): (w.seed, window_noise(plan, w)) for w in phase_d}
    assert len({s for s, _ in reference.values()}) == len(reference)
    for batch_size in (1, 2, 4, 100):
        for world in (1, 2, 3):
            got = {}
            for rank in range(world):
                batches = phase_batches(phase_d, batch_size, rank=rank, world_size=world)
                assert all(1 <= len(b) <= batch_size for b in batches)
                assert [w for b in batches for w in b] == phase_d[rank::world]
                for b in batches:
                    for w in b:
                        assert (w.row, w.col) not in got
                        got[(w.row, w.col)] = (w.seed, window_noise(plan, w))
            assert got.keys() == reference.keys()
            for key, (seed, noise) in got.items():
                assert seed == reference[key][0] and torch.equal(noise, reference[key][1])
    # seeds differ by level and by slide seed, and are pinned (changing the hash changes every generated slide)
    assert window_seed(1234, 0, 1, 1) != window_seed(1234, 1, 1, 1) != window_seed(1235, 1, 1, 1)
    assert window_seed(1234, 0, 1, 1) == plan.window(0, 1, 1).seed == window_seed(1234, 0, 1, 1)
    assert window_seed(0, 0, 0, 0) == 5809880761037817570
    with pytest.raises(ValueError, match="rank must be in \\[0, world_size=2\\), got 2"):
        phase_batches(phase_d, 2, rank=2, world_size=2)


def test_tissue_windows_follow_the_parent_mask(plan) -> None:
    # a parent-level (2 µm/px) mask, 150 x 190 px, with tissue only in a blob at 100-140 µm down, 200-260 µm across
    mask = np.zeros((150, 190), bool)
    mask[50:70, 100:130] = True
    kept = {(w.row, w.col) for w in tissue_windows(plan, 0, mask, 2.0)}
    # level-0 windows are 64 µm: rows 1-2 (64..192 µm) and cols 3-4 (192..320 µm) hold the blob
    assert kept == {(1, 3), (1, 4), (2, 3), (2, 4)}
    assert tissue_windows(plan, 0, np.zeros((150, 190), bool), 2.0) == []
    assert len(tissue_windows(plan, 0, np.ones((150, 190), bool), 2.0)) == 30
    # a window holding 1 of 1024 mask pixels of tissue is dropped once a minimum fraction is asked for
    speck = np.zeros((150, 190), bool)
    speck[0, 0] = True
    assert [(w.row, w.col) for w in tissue_windows(plan, 0, speck, 2.0)] == [(0, 0)]
    assert tissue_windows(plan, 0, speck, 2.0, min_fraction=0.01) == []
    with pytest.raises(ValueError, match="mask must be a 2-D bool array, got uint8"):
        tissue_windows(plan, 0, np.zeros((4, 4), np.uint8), 2.0)


def test_build_sample_checks_shapes(plan) -> None:
    w = plan.window(0, 1, 1)
    with pytest.raises(ValueError, match=r"target latents must be \(16, 1, 16, 16\) \(the window.s target box\), got \(16, 16, 16\)"):
        build_sample(plan, w, lambda lv, r, c: None, torch.zeros(3, 32), torch.zeros(16, 16, 16))
    bad_read = r"read\(0, \(12, 16\), \(12, 16\)\) returned \(16, 1, 1\), expected \(16, 4, 4\)"
    with pytest.raises(ValueError, match=bad_read):
        build_sample(plan, w, lambda lv, r, c: np.zeros((16, 1, 1)), torch.zeros(3, 32), window_noise(plan, w))


def test_window_sequences_drive_the_tiny_s3dit(plan) -> None:
    """A phase-D batch built by the planner runs through the real packed model and the sampler; contexts matter."""
    from zwsi.model.config import S3DiTConfig
    from zwsi.model.s3dit import S3DiT
    from zwsi.sampling import sample, sequence_denoiser

    torch.manual_seed(0)
    model = S3DiT(S3DiTConfig.preset("tiny")).eval()
    rng = np.random.default_rng(0)
    canvases = {lv: rng.standard_normal((16, *plan.level(lv).latent_shape)).astype(np.float32) for lv in range(3)}

    def read(lv, rows, cols):
        return canvases[lv][:, rows[0] : rows[1], cols[0] : cols[1]]

    report = torch.randn(5, 32)
    windows = plan.windows(0, 3)[:2]
    samples = [build_sample(plan, w, read, report, window_noise(plan, w)) for w in windows]
    uncond = [build_sample(plan, w, read, report[:0], window_noise(plan, w)) for w in windows]
    with torch.no_grad():
        out = sample(
            sequence_denoiser(model, samples), [s.target.latents for s in samples], num_steps=2,
            guidance_scale=1.5, uncond_model=sequence_denoiser(model, uncond),
        )
        assert [tuple(o.shape) for o in out] == [(16, 1, 16, 16)] * 2
        assert all(torch.isfinite(o).all() for o in out)
        # a neighbour strip changes the target's prediction; the same window alone in a batch gives the same result
        pred = model([samples[0]])[0]
        canvases[0][:, 14:16, 12:14] += 5.0  # the above-left neighbour's corner strip of window (1, 1)
        assert (1, 1) == (windows[0].row, windows[0].col)
        changed = model([build_sample(plan, windows[0], read, report, window_noise(plan, windows[0]))])[0]
        assert (changed - pred).abs().max() > 1e-4
        torch.testing.assert_close(model(samples)[0], pred, atol=1e-5, rtol=1e-5)


def test_window_sequences_train_with_flow_loss(plan) -> None:
    """Training composes the same pieces: planner samples -> sequence_denoiser -> flow_loss, gradients reach weights."""
    from zwsi.flow import flow_loss, sample_sigmas
    from zwsi.model.config import S3DiTConfig
    from zwsi.model.s3dit import S3DiT
    from zwsi.sampling import sequence_denoiser

    torch.manual_seed(0)
    model = S3DiT(S3DiTConfig.preset("tiny"))
    canvas = {lv: torch.randn(16, *plan.level(lv).latent_shape) for lv in range(3)}

    def read(lv, rows, cols):
        return canvas[lv][:, rows[0] : rows[1], cols[0] : cols[1]]

    windows = [plan.window(0, 2, 2), plan.window(0, 3, 3)]
    x0 = [read(0, *w.latent_box(CFG))[:, None] for w in windows]  # clean targets from the "store"
    samples = [build_sample(plan, w, read, torch.randn(6, 32), x, specs=context_specs(plan, w, phase=p))
               for w, x, p in zip(windows, x0, (1, 3))]
    g = torch.Generator().manual_seed(0)
    loss = flow_loss(sequence_denoiser(model, samples), x0, sample_sigmas(2, shift=3.0, generator=g), generator=g)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    assert model.all_x_embedder["2-1"].weight.grad.abs().sum() > 0
    assert model.cap_embedder[1].weight.grad.abs().sum() > 0
