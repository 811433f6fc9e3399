"""SlideGenerator end to end on CPU: oracle geometry, determinism over batch size and processes, resume, output.

The oracle model returns the exact velocity toward known per-level latent canvases. It recognises each window by
its target latents (x = (1 - sigma) x0 + sigma eps with the window's own seeded noise eps), and checks every
context it is shown against the known canvases at the place its positions register it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reports import PhiFoundError, ReportTruncatedWarning
from slide_io import WindowStore, banded_tissue_mask, open_slide, read_provenance
from tests.conftest import shared_file
from tests.zwsi.generate.generate_testing import Counting
from zwsi.background import BACKGROUND_RGB, background_latents
from zwsi.generate import GenerateConfig
from zwsi.generate.pipeline import SlideGenerator
from zwsi.model.sequence import report_token_count
from zwsi.planner import SlidePlan, tissue_windows, window_noise

REPORT = "Invasive ductal carcinoma, Nottingham grade 2. Margins negative. Lymphovascular invasion not identified."
# DESIGN §3: the neighbours (drow, dcol) each phase sees (those inside the grid).
PHASE_NEIGHBOURS = {
    0: set(),
    1: {(0, -1), (0, 1)},
    2: {(-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1)},
    3: {(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)},
}
SMALL = dict(width_um=380.0, height_um=250.0, mpp=2.0)  # 190 x 125 px: 2 x 3 windows of 64 px, 1 coarse window
STEPS = 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/zwsi/conftest.py


def with_config(gen: SlideGenerator, **changes: Any) -> SlideGenerator:
    """The same components under another config (the model hash is the same weights')."""
    return SlideGenerator(gen.transformer, gen.vae, gen.text_encoder, config=dataclasses.replace(gen.config, **changes),
                          shift=gen.shift, model_sha256=gen.model_sha256, name=gen.name)


def read_level(path: Path, level: int) -> np.ndarray:
    with open_slide(path) as slide:
        w, h = slide.level_dimensions[level]
        return slide.read_region((0, 0), level, (w, h), as_array=True)


# ---- the oracle ----------------------------------------------------------------------------------------------------
class Oracle(torch.nn.Module):
    """Exact velocity toward known latent canvases; records and checks what each window sees."""

    def __init__(self, config: Any, plan: SlidePlan, known: dict[int, torch.Tensor], n_report: int) -> None:
        super().__init__()
        self.config = config
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.plan, self.known, self.t_axis = plan, known, report_token_count(n_report) + 1
        n = plan.config.window_latents
        self.windows = []
        for lv in plan.levels:
            for w in plan.windows(lv.index):
                x0 = known[lv.index][:, w.row * n : (w.row + 1) * n, w.col * n : (w.col + 1) * n][:, None]
                self.windows.append((w, window_noise(plan, w), x0))
        self.order: list[Any] = []  # windows in the order of their first model call
        self.seen: dict[Any, dict[str, Any]] = {}

    def forward(self, batch: list[Any]) -> list[torch.Tensor]:
        out = []
        for s in batch:
            sigma = 1.0 - float(s.t)
            x = s.target.latents.float()
            errors = [float((x - ((1 - sigma) * x0 + sigma * eps)).abs().max()) for _, eps, x0 in self.windows]
            k = int(np.argmin(errors))
            assert errors[k] < 1e-4, f"target matches no window's noisy path (best error {errors[k]})"
            w, _, x0 = self.windows[k]
            if float(s.t) == 0.0:
                self.order.append(w)
                self.seen[w] = self.check_contexts(w, s)
            out.append((x0 - x) / sigma)  # x0 - eps with eps = (x - (1 - sigma) x0) / sigma
        return out

    def check_contexts(self, w: Any, s: Any) -> dict[str, Any]:
        cfg, p = self.plan.config, self.plan.config.patch_size
        n_tok, k = cfg.window_tokens, cfg.context_tokens
        oy, ox = w.row * n_tok, w.col * n_tok  # target origin in level tokens
        assert torch.equal(s.target.positions[0], torch.tensor([self.t_axis, 0.0, 0.0]))
        offsets, overviews = set(), 0
        for seg in s.contexts:
            pos = seg.positions.double()
            depth = int(pos[0, 0]) - self.t_axis
            n_h, n_w = seg.latents.shape[-2] // p, seg.latents.shape[-1] // p
            hs, ws = pos[:, 1].reshape(n_h, n_w), pos[:, 2].reshape(n_h, n_w)
            assert bool((pos[:, 0] == self.t_axis + depth).all())
            if depth == 0:  # a neighbour strip at its true offset, step 1
                h0, w0 = int(hs[0, 0]), int(ws[0, 0])
                assert torch.equal(hs, h0 + torch.arange(n_h, dtype=torch.float64)[:, None].expand(n_h, n_w))
                assert torch.equal(ws, w0 + torch.arange(n_w, dtype=torch.float64)[None, :].expand(n_h, n_w))
                dr = -1 if h0 < 0 else (1 if h0 >= n_tok else 0)
                dc = -1 if w0 < 0 else (1 if w0 >= n_tok else 0)
                assert n_h == (n_tok if dr == 0 else k) and n_w == (n_tok if dc == 0 else k)
                assert (dr, dc) != (0, 0)
                offsets.add((dr, dc))
                rows, cols = slice((oy + h0) * p, (oy + h0 + n_h) * p), slice((ox + w0) * p, (ox + w0 + n_w) * p)
                expect = self.known[w.level][:, rows, cols]
            else:  # the parent overview: token i at (i + 1/2) s - 1/2 - origin, step s
                assert depth == 1
                s_ = cfg.factor
                i0 = (float(hs[0, 0]) + oy + 0.5) / s_ - 0.5
                j0 = (float(ws[0, 0]) + ox + 0.5) / s_ - 0.5
                assert i0 == int(i0) and j0 == int(j0)
                i0, j0 = int(i0), int(j0)
                assert torch.allclose(hs[1:, 0] - hs[:-1, 0], torch.tensor(float(s_), dtype=torch.float64))
                assert i0 <= oy // s_ and j0 <= ox // s_  # covers the window's footprint (plus margin)
                parent = self.plan.level(w.level + 1)
                assert i0 + n_h >= min(-(-(oy + n_tok) // s_), parent.tokens[0])
                assert j0 + n_w >= min(-(-(ox + n_tok) // s_), parent.tokens[1])
                overviews += 1
                expect = self.known[w.level + 1][:, i0 * p : (i0 + n_h) * p, j0 * p : (j0 + n_w) * p]
            torch.testing.assert_close(seg.latents[:, 0].float(), expect, atol=1e-5, rtol=0)
        return {"offsets": offsets, "overviews": overviews}


def test_oracle_reproduces_a_known_latent_slide(tiny: SlideGenerator, tmp_path: Path) -> None:
    gen = with_config(tiny, tissue=False, latent_dtype="float32", compression="deflate", tile_size=64)
    request = dict(width_um=700.0, height_um=600.0, mpp=2.0, seed=11)  # 350 x 300 px: 5 x 6 windows, 2 x 2 above
    plan = gen.plan(request["width_um"], request["height_um"], request["mpp"], request["seed"])
    assert [lv.grid for lv in plan.levels] == [(5, 6), (2, 2)]
    g = torch.Generator().manual_seed(5)
    known = {lv.index: 0.7 * torch.randn(16, *lv.latent_shape, generator=g) for lv in plan.levels}
    n_report = gen.text_encoder.encode([gen.conditioning(REPORT).text])[0].shape[0]
    gen.transformer = oracle = Oracle(tiny.transformer.config, plan, known, n_report)
    out = tmp_path / "oracle.tiff"
    result = gen.generate(REPORT, steps=4, out=out, keep_work=True, progress=False, **request)

    # every window was generated once, phase by phase, seeing exactly the contexts of DESIGN §3
    assert len(oracle.order) == 34 and len(set(oracle.order)) == 34
    for lv in plan.levels:
        calls = [w for w in oracle.order if w.level == lv.index]
        phases = [w.phase for w in calls]
        assert phases == sorted(phases), "a phase started before the previous one finished"
        rows, cols = lv.grid
        for w in calls:
            inside = {(dr, dc) for dr, dc in PHASE_NEIGHBOURS[w.phase]
                      if 0 <= w.row + dr < rows and 0 <= w.col + dc < cols}
            assert oracle.seen[w]["offsets"] == inside, (w, oracle.seen[w]["offsets"], inside)
            assert oracle.seen[w]["overviews"] == (0 if lv.index == plan.coarsest else 1)
    assert {w.phase for w in oracle.order if w.level == 0} == {0, 1, 2, 3}

    # the stores hold the known latents, and the slide is their VAE decode
    latents = WindowStore.open(out.parent / "oracle.tiff.work" / "latents.zarr", "r")
    for lv in plan.levels:
        got = latents.read(lv.index, (0, lv.latent_shape[0]), (0, lv.latent_shape[1]))
        np.testing.assert_allclose(got, known[lv.index].numpy(), atol=1e-5, rtol=0)
    cfg = gen.config
    for level in (0, 1):
        h, w = plan.level(level).slide_pixels
        direct = gen.vae.decode_tiled(known[level], tile=cfg.vae_tile, overlap=cfg.vae_overlap)[:h, :w]
        if level == 0:
            got = read_level(out, 0)
        else:
            pixels = WindowStore.open(out.parent / "oracle.tiff.work" / "pixels.zarr", "r")
            got = pixels.read(1, (0, h), (0, w))
        diff = np.abs(got.astype(int) - direct.astype(int))
        assert got.shape == (h, w, 3)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (level, diff.max(), (diff > 0).mean())
    assert result.model_windows == {1: 4, 0: 30} and result.background_windows == {1: 0, 0: 0}


# ---- determinism, processes, resume, output ------------------------------------------------------------------------
def _two_process_worker(rank: int, port: int, out: str, gen: SlideGenerator) -> None:
    """One of two forked processes: the same tiny pipeline, joined through accelerate (gloo) by the environment."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from accelerate import PartialState

    PartialState._reset_state()  # forked: forget a single-process state an earlier test made in the parent
    gen.generate(REPORT, seed=3, steps=STEPS, out=out, progress=False, **SMALL)


class Killed(RuntimeError):
    pass


def test_same_slide_for_any_batch_size_process_count_and_after_a_kill(tiny: SlideGenerator, tmp_path: Path) -> None:
    settings = dict(compression="deflate", tile_size=64)
    one = with_config(tiny, batch_size=1, **settings)
    ref_path = tmp_path / "b1.tiff"
    ref = one.generate(REPORT, seed=3, steps=STEPS, out=ref_path, keep_work=True, progress=False, **SMALL)
    reference = [read_level(ref_path, k) for k in range(3)]
    assert reference[0].shape == (125, 190, 3) and reference[0].std() > 1  # a real, non-constant image
    total = sum(ref.model_windows.values())
    assert total + sum(ref.background_windows.values()) == 7

    # windows without tissue in the parent level were filled with the blank-background latents, without a model call
    plan = ref.plan
    work = tmp_path / "b1.tiff.work"
    pixels = WindowStore.open(work / "pixels.zarr", "r")
    parent = plan.level(1)
    mask, mask_mpp = banded_tissue_mask(lambda y0, y1: pixels.read(1, (y0, y1), (0, parent.slide_pixels[1])),
                                        parent.slide_pixels, parent.mpp, one.config.tissue_mpp)
    expected = {(w.row, w.col) for w in tissue_windows(plan, 0, mask, mask_mpp)}
    assert ref.tissue_windows[0] == ref.model_windows[0] == len(expected)
    blank = background_latents(one.vae, plan.config).astype(np.float16)
    latents = WindowStore.open(work / "latents.zarr", "r")
    n = plan.config.window_latents
    for w in plan.windows(0):
        window = latents.read(0, (w.row * n, (w.row + 1) * n), (w.col * n, (w.col + 1) * n))
        assert np.array_equal(window, blank) == ((w.row, w.col) not in expected)

    # batch size 4: identical pixels
    four = with_config(tiny, batch_size=4, **settings)
    four.generate(REPORT, seed=3, steps=STEPS, out=tmp_path / "b4.tiff", progress=False, **SMALL)
    assert all(np.array_equal(read_level(tmp_path / "b4.tiff", k), reference[k]) for k in range(3))
    assert not (tmp_path / "b4.tiff.work").exists()

    # a run killed in the middle of level 0, then resumed: same pixels, no finished window computed again
    killed = with_config(tiny, batch_size=1, **settings)
    killed.transformer = counter = Counting(tiny.transformer)
    written = []

    def kill_after_four(window: Any) -> None:
        written.append(window)
        if len(written) == 4:
            raise Killed("simulated kill")

    out = tmp_path / "resumed.tiff"
    with pytest.raises(Killed):
        killed.generate(REPORT, seed=3, steps=STEPS, out=out, progress=False, on_window=kill_after_four, **SMALL)
    assert written[-1].level == 0 and not out.exists()
    finished = counter.forwards // STEPS
    assert 0 < finished < total
    # resumed with batch size 4: the batch size is not part of the job, the slide is the same
    again = with_config(tiny, batch_size=4, **settings)
    again.transformer = counter = Counting(tiny.transformer)
    resumed = again.generate(REPORT, seed=3, steps=STEPS, out=out, progress=False, **SMALL)
    assert counter.forwards == (total - finished) * STEPS
    assert resumed.resumed_windows[0] > 0
    assert all(np.array_equal(read_level(out, k), reference[k]) for k in range(3))
    a, b = read_provenance(out), read_provenance(ref_path)
    assert dataclasses.replace(a, created="") == dataclasses.replace(b, created="")

    # two processes (gloo) sharing the store on disk: identical pixels
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = tmp_path / "two.tiff"
    pair = with_config(tiny, batch_size=2, device="cpu", **settings)
    torch.multiprocessing.start_processes(_two_process_worker, args=(port, str(two), pair), nprocs=2,
                                          start_method="fork")
    assert all(np.array_equal(read_level(two, k), reference[k]) for k in range(3))


def test_output_opens_in_openslide_and_tiffslide_with_levels_mpp_and_synthetic_flag(tiny: SlideGenerator,
                                                                                  tmp_path: Path) -> None:
    import openslide
    import tiffslide

    gen = with_config(tiny, tile_size=64)
    out = tmp_path / "slide.tiff"
    result = gen.generate(REPORT, seed=9, steps=1, out=out, progress=False, **SMALL)
    levels = {}
    for reader, prefix in ((openslide.OpenSlide, "openslide"), (tiffslide.TiffSlide, "tiffslide")):
        slide = reader(str(out))
        assert slide.level_dimensions == ((190, 125), (95, 63), (48, 32))
        assert float(slide.properties[f"{prefix}.mpp-x"]) == pytest.approx(2.0)
        assert float(slide.properties[f"{prefix}.mpp-y"]) == pytest.approx(2.0)
        assert str(slide.properties["aperio.Synthetic"]).lower() == "true"  # the default container is svs
        assert float(slide.properties[f"{prefix}.objective-power"]) == 5  # 10 / 2 µm/px
        levels[prefix] = [np.asarray(slide.read_region((0, 0), k, d))[..., :3] for k, d in
                          enumerate(slide.level_dimensions)]
        slide.close()
    for a, b in zip(levels["openslide"], levels["tiffslide"]):
        assert np.array_equal(a, b) and a.std() > 1
    prov = read_provenance(out)
    assert prov is not None and prov.synthetic and prov.seed == 9
    assert prov.report_sha256 == hashlib.sha256(result.conditioning.text.encode()).hexdigest()
    assert prov.model_sha256 == gen.model_sha256 and len(prov.config_sha256) == 64
    assert prov.extra["request"] == {"width_um": 380.0, "height_um": 250.0, "mpp": 2.0, "steps": 1, "guidance": 0.0,
                                     "shift": 3.0}


# ---- report handling and errors ------------------------------------------------------------------------------------
def test_phi_is_refused_before_anything_is_written(tiny: SlideGenerator, tmp_path: Path) -> None:
    out = tmp_path / "phi.tiff"
    with pytest.raises(PhiFoundError):
        tiny.generate("Patient: John Smith, MRN 12345678. Adenocarcinoma.", seed=1, out=out, progress=False, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_truncation_is_warned(tiny: SlideGenerator) -> None:
    long_report = " ".join(["Invasive ductal carcinoma with extensive intraductal component."] * 120)
    with pytest.warns(ReportTruncatedWarning, match="exceed encoder"):
        cond = tiny.conditioning(long_report)
    assert cond.truncated and cond.cut_text


def test_bad_requests_name_the_value(tiny: SlideGenerator, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="width_um must be a positive number, got -5"):
        tiny.generate(REPORT, width_um=-5, height_um=100, mpp=2.0, seed=1, out=tmp_path / "x.tiff")
    with pytest.raises(ValueError, match=r"'x.png' does not fit format 'svs': expected a name ending in \.svs, \.tif, "
                                         r"\.tiff"):
        tiny.generate(REPORT, width_um=100, height_um=100, mpp=2.0, seed=1, out=tmp_path / "x.png")
    with pytest.raises(ValueError, match="seed must be an integer"):
        tiny.generate(REPORT, width_um=100, height_um=100, mpp=2.0, seed=-1, out=tmp_path / "x.tiff")
    assert list(tmp_path.iterdir()) == []


def test_a_work_folder_of_another_job_is_refused(tiny: SlideGenerator, tmp_path: Path) -> None:
    gen = with_config(tiny)
    gen.transformer = Counting(tiny.transformer)
    out = tmp_path / "s.tiff"

    def stop(window: Any) -> None:
        raise Killed("stop")

    with pytest.raises(Killed):
        gen.generate(REPORT, width_um=100, height_um=100, mpp=2.0, seed=1, steps=1, out=out, on_window=stop,
                     progress=False)
    with pytest.raises(ValueError, match=r"belongs to another job \(differs in \['seed'\]\)"):
        gen.generate(REPORT, width_um=100, height_um=100, mpp=2.0, seed=2, steps=1, out=out, progress=False)


def test_presets_need_random_init_and_folders_round_trip(tiny: SlideGenerator, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="random_init=True"):
        SlideGenerator.from_pretrained("tiny")
    with pytest.raises(FileNotFoundError, match="neither a folder nor a pipeline preset"):
        SlideGenerator.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['windows'\]"):
        SlideGenerator.from_pretrained("tiny", random_init=True, config={"windows": 3})
    folder = tiny.save_pretrained(tmp_path / "tiny-pipeline")
    assert sorted(p.name for p in folder.iterdir()) == [
        "model_index.json", "scheduler", "text_encoder", "transformer", "vae", "zwsi_generate.yaml"]
    loaded = SlideGenerator.from_pretrained(folder)
    assert loaded.config == dataclasses.replace(tiny.config, device=None) and loaded.shift == 3.0
    for a, b in zip(tiny.transformer.state_dict().values(), loaded.transformer.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(tiny.vae.autoencoder.state_dict().values(), loaded.vae.autoencoder.state_dict().values()):
        assert torch.equal(a, b)
    text = tiny.conditioning(REPORT).text
    assert torch.equal(tiny.text_encoder.encode([text])[0], loaded.text_encoder.encode([text])[0])
    assert len(loaded.model_sha256) == 64


def test_tissue_mask_of_a_level_selects_the_tissue_windows(tmp_path: Path) -> None:
    """Real H&E on the left half, blank glass on the right: only windows over tissue are generated."""
    from zwsi.planner import PlanConfig, plan_slide

    with open_slide(shared_file("wsi/CMU-1-Small-Region.svs")) as slide:
        tissue = slide.read_region_mpp((896, 1408), 8.0, (64, 96))  # (96, 64, 3): 0.5 x 0.77 mm of dense tissue
    parent_px = np.full((96, 128, 3), 255, np.uint8)
    parent_px[:, :64] = tissue
    plan = plan_slide(768, 1024, 2.0, seed=0, config=PlanConfig(window_tokens=4, context_tokens=1,
                                                                overview_margin=1))
    assert plan.level(1).slide_pixels == (96, 128) and plan.level(0).grid == (6, 8)
    store = WindowStore.create(tmp_path / "px.zarr", "pixel")
    store.create_level(1, (96, 128), mpp=8.0, grid=(96, 128))
    store.write_window(1, 0, 0, parent_px)
    mask, mask_mpp = banded_tissue_mask(lambda y0, y1: store.read(1, (y0, y1), (0, 128)), (96, 128), 8.0, 16.0)
    assert mask_mpp == 16.0 and mask.shape == (48, 64)
    assert mask[:, 34:].sum() == 0 and mask[:, :32].mean() > 0.5
    chosen = {(w.row, w.col) for w in tissue_windows(plan, 0, mask, mask_mpp)}
    assert all(c < 5 for _, c in chosen) and {c for _, c in chosen} >= {0, 1, 2, 3} and len(chosen) >= 16


def test_generate_config_yaml_and_errors(tmp_path: Path) -> None:
    from zwsi.generate import load_generate_config

    for name in ("tiny", "z-image-turbo"):
        path = Path(__file__).resolve().parents[3] / "configs" / "generate" / f"{name}.yaml"
        assert load_generate_config(path) == GenerateConfig.preset(name)
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nprompt_enhancer: true\n")
    with pytest.raises(ValueError, match="prompt enhancer"):
        load_generate_config(bad)
    with pytest.raises(ValueError, match=r"context_tokens must be in \[0, window_tokens=4\], got 5"):
        GenerateConfig.preset("tiny").merged({"plan": {"context_tokens": 5}})
    # no truthy strings, no numbers as strings: each is an error naming the key, the value and the type expected
    for key, value, expected in (("tissue", "no", "true or false"), ("coarsest_mpp", "8", "a number"),
                                 ("quality", "90", "an integer"), ("plan", {"window_tokens": 4.0}, "an integer")):
        bad.write_text(f"preset: tiny\n{key}: {value!r}\n" if key != "plan" else "plan: {window_tokens: 4.0}\n")
        dotted = "plan.window_tokens" if key == "plan" else key
        with pytest.raises(ValueError, match=rf"{bad}: {dotted} must be {expected}, got"):
            load_generate_config(bad)
    # a model folder written before the plan was nested states its geometry at the top level
    bad.write_text("preset: tiny\nwindow_tokens: 8\ncontext_tokens: 2\nsteps: 3\n")
    legacy = load_generate_config(bad)
    assert (legacy.plan.window_tokens, legacy.plan.context_tokens, legacy.plan.overview_margin, legacy.steps) == (8, 2, 1, 3)
    bad.write_text("window_tokens: 8\nplan: {window_tokens: 8}\n")
    with pytest.raises(ValueError, match=r"\['window_tokens'\] given both at the top level and under plan"):
        load_generate_config(bad)
    with pytest.raises(ValueError, match="unknown generate preset 'huge'"):
        GenerateConfig.preset("huge")


def test_streamed_decode_weights_equal_the_dense_blend_weights() -> None:
    """`vae.span_blend_weights` (used by iter_decode for wide levels) equals `blend_weights` on every span."""
    from zwsi.vae import blend_weights, span_blend_weights, tile_spans

    for size, tile, overlap in [(1000, 128, 16), (12500, 32, 8), (77, 16, 4), (300, 64, 40), (50, 64, 8)]:
        spans = tile_spans(size, tile, overlap)
        dense, per_span = blend_weights(spans, size), span_blend_weights(spans, size)
        assert len(per_span) == len(spans)
        for k, (start, stop) in enumerate(spans):
            assert np.array_equal(dense[k, start:stop], per_span[k])
            assert dense[k, :start].sum() == 0 and dense[k, stop:].sum() == 0


def test_background_windows_are_painted_blank_glass(tiny: SlideGenerator, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows the parent level shows no tissue in come out exactly BACKGROUND_RGB; the tissue window does not."""
    import zwsi.generate.pipeline as pipeline

    real, kept = pipeline.tissue_windows, {}

    def first_only(plan, level, *args, **kwargs):  # the planner's decision, cut to one tissue window per level
        kept[level] = real(plan, level, *args, **kwargs)[:1]
        return kept[level]

    monkeypatch.setattr(pipeline, "tissue_windows", first_only)
    out = tmp_path / "g.tiff"
    result = with_config(tiny, compression="deflate").generate(REPORT, seed=3, steps=1, out=out, progress=False, **SMALL)
    assert result.model_windows[0] == 1 and result.background_windows[0] == 5
    level0 = read_level(out, 0)  # (125, 190, 3)
    n_px = result.plan.config.window_latents * result.plan.config.vae_factor
    w = kept[0][0]
    painted = np.ones(level0.shape[:2], bool)
    painted[w.row * n_px : (w.row + 1) * n_px, w.col * n_px : (w.col + 1) * n_px] = False
    assert (level0[painted] == BACKGROUND_RGB).all()
    assert level0[~painted].std() > 1  # the generated window is an image, not glass
