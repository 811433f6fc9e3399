"""Training on real tiles (the CMU slide at 4 and 16 µm/px, real TCGA reports) with the tiny model on CPU.

Loss falls; stop + resume equals an uninterrupted run exactly; LoRA trains only adapters and merges into base +
adapter; 2 gloo processes equal 1 process on the same global batch; a planted NaN is skipped and reported;
training windows have generation's context patterns and positions.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import REPO_ROOT
from zwsi.cli import main
from zwsi.train.config import from_dict
from zwsi.train.trainer import NonFiniteLossError, Trainer, TrainResult

torch.set_num_threads(1)  # 2 shared cores: oversubscribed OpenMP threads are 10x slower

BASE = yaml.safe_load((REPO_ROOT / "configs/train/tiny-cpu.yaml").read_text())
QUIET = {"log": {"progress": False}, "validation": {"every": 0}, "checkpoint": {"every": 0}}


@pytest.fixture
def dataset(prepared: Path) -> Path:
    """The session's prepared dataset (tests/zwsi/train/conftest.py); training only reads it."""
    return prepared


def config(**sections: Any) -> Any:
    overrides: dict[str, Any] = json.loads(json.dumps(QUIET))
    for key, value in sections.items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    return from_dict(BASE, overrides)


def train(dataset: Path, out: Path, resume: Path | None = None, **sections: Any) -> TrainResult:
    return Trainer(config(**sections), out=out, dataset=dataset, resume=resume).fit()


def metrics(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---- the objective learns --------------------------------------------------------------------------------------------
def test_loss_falls_and_validation_writes_sample_pngs(dataset: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "run"
    result = train(dataset, out, budget={"max_steps": 60}, validation={"every": 60, "sample_windows": 2})
    first, last = np.mean(result.losses[:10]), np.mean(result.losses[-10:])
    print(f"loss first 10 steps {first:.4f}, last 10 steps {last:.4f}; val {result.validation}")
    assert last < 0.7 * first
    rows = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, 61)) and rows[-1]["tokens"] == result.tokens > 0
    assert math.isfinite(result.validation[60]["val_loss"])
    pngs = sorted((out / "samples" / "step-0000060").glob("*.png"))
    assert len(pngs) == 2 and np.asarray(Image.open(pngs[0])).shape == (64, 128, 3)  # real | sample, 64 px windows
    assert (out / "final" / "transformer" / "config.json").is_file() and (out / "final" / "ema-transformer").is_dir()


@pytest.mark.slow
def test_loss_and_validation_loss_fall_over_300_steps(dataset: Path, tmp_path: Path) -> None:
    result = train(dataset, tmp_path / "run", budget={"max_steps": 300}, validation={"every": 50, "sample_windows": 0})
    print("validation loss by step:", result.validation)
    assert np.mean(result.losses[-30:]) < 0.6 * np.mean(result.losses[:10])
    assert result.validation[300]["val_loss"] < result.validation[50]["val_loss"]


# ---- checkpoints ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["full", "lora"])
def test_stopped_and_resumed_run_equals_an_uninterrupted_one_exactly(dataset: Path, tmp_path: Path, policy: str) -> None:
    kw: dict[str, Any] = {"optim": {"warmup_steps": 4}, "control": {"policy": policy, "lora": {"rank": 4}}}
    whole = train(dataset, tmp_path / "whole", budget={"max_steps": 10}, **kw)
    part1 = train(dataset, tmp_path / "split", budget={"max_steps": 5}, **kw)
    ck = tmp_path / "split" / "checkpoints" / "step-0000005"
    files = sorted(p.relative_to(ck).as_posix() for p in ck.rglob("*") if p.is_file())
    assert all(f.endswith((".safetensors", ".json")) for f in files), files  # no pickle anywhere
    model_file = "transformer/diffusion_pytorch_model.safetensors" if policy == "full" else "adapter/adapter_model.safetensors"
    assert {"optimizer.safetensors", "optimizer.json", "scheduler.json", "ema.safetensors", "state.json",
            "rng-rank0.safetensors", model_file} <= set(files)
    state = json.loads((ck / "state.json").read_text())
    assert (state["step"], state["next_sample_index"]) == (5, 20)
    part2 = train(dataset, tmp_path / "split", resume=tmp_path / "split", budget={"max_steps": 10}, **kw)
    assert part1.losses + part2.losses == whole.losses  # bit for bit on CPU
    assert [r["step"] for r in metrics(tmp_path / "split")] == list(range(1, 11))
    from safetensors.torch import load_file

    name = "ema-transformer/diffusion_pytorch_model.safetensors" if policy == "full" else "ema-adapter/adapter_model.safetensors"
    a, b = load_file(tmp_path / "whole/final" / name), load_file(tmp_path / "split/final" / name)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- LoRA -----------------------------------------------------------------------------------------------------------
def test_lora_trains_only_adapters_and_the_merged_checkpoint_equals_base_plus_adapter(dataset: Path, tmp_path: Path) -> None:
    from zwsi.model.checkpoint import load_transformer, save_pretrained
    from zwsi.train.control import build_model, load_adapter

    lora = {"policy": "lora", "lora": {"rank": 4, "alpha": 8.0}}
    cfg = config(control=lora, budget={"max_steps": 8}, optim={"lr": 1e-2}, ema={"enabled": False})
    trainer = Trainer(cfg, out=tmp_path / "lora", dataset=dataset)
    result = trainer.fit()
    counts = result.trainable
    print(f"LoRA: {counts['trainable']:,} trainable (adapter) parameters of {counts['total']:,}")
    # 2 main + 1 + 1 refiner blocks, each 4 attention projections (64->64) and w1, w3 (64->170), w2 (170->64)
    per_block = 4 * 4 * (64 + 64) + 2 * 4 * (64 + 170) + 4 * (170 + 64)
    assert counts["trainable"] == counts["lora"] == 4 * per_block
    base = build_model(cfg.model, seed=cfg.seed, initialize=False)  # LoRA's base: PyTorch's draws
    trained = dict(trainer.unwrapped.named_parameters())
    for name, p in base.named_parameters():  # the base is untouched (peft moves targeted weights under base_layer)
        head, _, leaf = name.rpartition(".")
        assert torch.equal(trained.get(f"{head}.base_layer.{leaf}", trained.get(name)), p), name
    adapter = tmp_path / "lora" / "final" / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    save_pretrained(base, tmp_path / "base")
    assert main(["train", "merge-lora", "--base", str(tmp_path / "base"), "--adapter", str(adapter),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = load_transformer(tmp_path / "merged", dtype="fp32")
    with_adapter = load_adapter(load_transformer(tmp_path / "base", dtype="fp32"), adapter)
    changed = sum(not torch.equal(merged.state_dict()[k], v) for k, v in base.state_dict().items())
    assert changed == 4 * 7  # every targeted projection moved
    sampler = trainer.sampler
    batch = [sampler.build(sampler.draw(i)) for i in range(3)]
    for e in batch:
        e.sample.target.latents = (1 - e.sigma) * e.x0 + e.sigma * e.eps
    with torch.no_grad():
        want = with_adapter.eval()([e.sample for e in batch])
        got = merged.eval()([e.sample for e in batch])
        plain = base.eval()([e.sample for e in batch])
    for g, w, p in zip(got, want, plain):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        assert (w - p).abs().max() > 1e-3  # the adapter matters


# ---- several processes ------------------------------------------------------------------------------------------------
def test_two_gloo_processes_match_one_on_the_same_global_batch(dataset: Path, tmp_path: Path) -> None:
    one = train(dataset, tmp_path / "one", budget={"max_steps": 3}, data={"batch_size": 4})
    two_cfg = json.loads(json.dumps(BASE))
    two_cfg["data"]["batch_size"] = 2
    for k, v in QUIET.items():
        two_cfg[k] = {**two_cfg.get(k, {}), **v}
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two_cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "zwsi", "train", "--config",
           str(tmp_path / "two.yaml"), "--dataset", str(dataset), "--out", str(tmp_path / "two"), "--max-steps", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout
    two = [r["loss"] for r in metrics(tmp_path / "two")]
    print("1 process:", one.losses, "2 processes:", two)
    np.testing.assert_allclose(two, one.losses, rtol=1e-5)
    assert [r["tokens"] for r in metrics(tmp_path / "two")] == [r["tokens"] for r in metrics(tmp_path / "one")]


# ---- health ----------------------------------------------------------------------------------------------------------
def _plant_nan(steps: set[int]) -> Any:
    def hook(trainer: Trainer) -> None:
        layer = trainer.unwrapped.all_final_layer["2-1"]
        if getattr(trainer, "_nan_handle", None) is not None:
            trainer._nan_handle.remove()
            trainer._nan_handle = None
        if trainer.step in steps:
            trainer._nan_handle = layer.register_forward_hook(lambda m, i, o: o * float("nan"))

    return hook


def test_a_planted_nan_is_skipped_counted_and_reported(dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(config(budget={"max_steps": 6}), out=tmp_path / "nan", dataset=dataset)
    trainer.add_step_hook(_plant_nan({3}))
    snapshot: dict[str, torch.Tensor] = {}

    def keep(tr: Trainer) -> None:
        if tr.step in (3, 4):
            snapshot[f"w{tr.step}"] = tr.unwrapped.layers[0].attention.to_q.weight.detach().clone()

    trainer.add_step_hook(keep)
    result = trainer.fit()
    assert result.skipped == 1 and math.isnan(result.losses[3]) and all(math.isfinite(x) for x in result.losses[4:])
    assert torch.equal(snapshot["w3"], snapshot["w4"])  # the bad step changed nothing
    rows = [r for r in metrics(tmp_path / "nan") if "loss" in r]
    assert rows[3]["nonfinite"] and rows[3]["skipped"] == 1 and rows[-1]["skipped"] == 1
    assert json.loads((tmp_path / "nan/checkpoints/step-0000006/state.json").read_text())["skipped"] == 1


def test_repeated_nans_stop_the_run_with_a_clear_error(dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(config(budget={"max_steps": 20}, health={"max_consecutive_nonfinite": 3}), out=tmp_path / "n",
                      dataset=dataset)
    trainer.add_step_hook(_plant_nan(set(range(2, 20))))
    with pytest.raises(NonFiniteLossError, match=r"3 consecutive steps \(up to step 5\) had a non-finite loss or gradient"):
        trainer.fit()


# ---- training windows = generation windows ---------------------------------------------------------------------------
def test_windows_have_generation_context_patterns_positions_and_set_drop_rates(dataset: Path) -> None:
    from zwsi.planner import build_sample, context_specs, neighbours
    from zwsi.train.dataset import PreparedDataset
    from zwsi.train.samples import WindowSampler, local_indices

    ds = PreparedDataset(dataset)
    cfg = config(data={"report_drop": 0.0, "overview_drop": 0.0})
    sampler = WindowSampler(ds, "train", cfg.data, cfg.objective, seed=3)
    assert [sampler.draw(i) for i in range(20)] == [WindowSampler(ds, "train", cfg.data, cfg.objective, 3).draw(i)
                                                    for i in range(20)]
    phases_seen, levels_seen = set(), set()
    for i in range(60):
        e = sampler.build(sampler.draw(i))
        d = e.draw
        entry = next(s for s in ds.slides() if s.slide_id == d.slide)
        plan = ds.plan(entry)
        window = plan.window(d.level, d.row, d.col)
        top = d.level == plan.coarsest  # the layout level trains on all its windows, glass included
        tissue = {(r, c) for r, c in entry.tissue[d.level]}
        assert d.phase == window.phase and (top or (d.row, d.col) in tissue)
        background = None if top else (lambda r, c, tissue=tissue: (r, c) not in tissue)  # glass is known before any phase
        specs = context_specs(plan, window, background=background)
        # what generation builds for this window, reading the same latents
        gen = build_sample(plan, window, lambda lv, r, c, entry=entry: ds.read_latents(entry, lv, r, c),
                           ds.report_features(entry), e.x0, specs=specs)
        assert len(e.sample.contexts) == len(gen.contexts) == len(specs)
        for a, b in zip(e.sample.contexts, gen.contexts):
            assert torch.equal(a.positions, b.positions) and torch.equal(a.latents, b.latents)
        assert torch.equal(e.sample.target.positions, gen.target.positions)
        seen = neighbours(plan, window, background=background)
        assert sum(s.kind == "neighbour" for s in specs) == len(seen)
        # phase A sees no generated neighbour, only known glass
        assert d.phase > 0 or all((d.row + dr, d.col + dc) not in tissue for dr, dc in seen)
        assert any(s.kind == "overview" for s in specs) == (d.level < plan.coarsest)
        phases_seen.add(d.phase)
        levels_seen.add(d.level)
    assert phases_seen == {0, 1, 2, 3} and levels_seen == {0, 1}

    drops = config(data={"report_drop": 0.3, "overview_drop": 0.2})
    s2 = WindowSampler(ds, "train", drops.data, drops.objective, seed=0)
    draws = [s2.draw(i) for i in range(3000)]
    assert abs(np.mean([d.drop_report for d in draws]) - 0.3) < 0.03
    assert abs(np.mean([d.drop_overview for d in draws]) - 0.2) < 0.03
    e = s2.build(next(d for d in draws if d.drop_report and d.drop_overview and d.level == 0))
    assert e.sample.report.shape == (0, 384) and all(c.positions[0, 0] == 1 for c in e.sample.contexts)  # t axis Lp+1 = 1

    for s in ds.manifest.slides:  # every slide in train: 2 breast, 1 stomach, 1 GBM, 1 uveal
        s.split = "train"
    for balance, breast in ((1.0, 0.25), (0.0, 0.4)):
        c = config(data={"subtype_balance": balance})
        s3 = WindowSampler(ds, "train", c.data, c.objective, seed=0)
        assert abs(s3.subtype_frequencies()["Breast invasive carcinoma"] - breast) < 1e-9
        got = np.mean([s3.draw(i).slide.startswith(("TCGA-A8", "TCGA-AN")) for i in range(3000)])
        assert abs(got - breast) < 0.03

    one = local_indices(5, 0, batch_size=4, grad_accum=1, rank=0, world_size=1)
    two = sum((local_indices(5, 0, batch_size=2, grad_accum=1, rank=r, world_size=2) for r in range(2)), [])
    assert one == two == list(range(20, 24))


# ---- frozen groups and the token budget -------------------------------------------------------------------------------
@pytest.mark.parametrize("group", ["report", "image"])
def test_a_frozen_group_does_not_move_and_the_rest_does(dataset: Path, tmp_path: Path, group: str) -> None:
    from zwsi.train.config import FREEZE_GROUPS
    from zwsi.train.control import build_model

    cfg = config(control={"policy": "full", "freeze": [group]}, budget={"max_steps": 2}, ema={"enabled": False},
                 data={"report_drop": 0.0})
    trainer = Trainer(cfg, out=tmp_path / group, dataset=dataset)
    result = trainer.fit()
    before = dict(build_model(cfg.model, seed=cfg.seed, initialize=False).named_parameters())  # frozen: no DiT init
    after = dict(trainer.unwrapped.named_parameters())
    frozen = {n for n in before if n.split(".")[0] in FREEZE_GROUPS[group]}
    assert frozen and result.trainable["trainable"] == sum(p.numel() for n, p in before.items() if n not in frozen)
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    moved = [n for n in before if n not in frozen and not torch.equal(before[n], after[n])]
    assert "layers.0.attention.to_q.weight" in moved and len(moved) > len(before) // 2


def test_a_token_budget_stops_the_run_once_spent(dataset: Path, tmp_path: Path) -> None:
    result = train(dataset, tmp_path / "tok", budget={"max_steps": None, "max_tokens": 1000})
    rows = [r for r in metrics(tmp_path / "tok") if "loss" in r]
    assert result.tokens >= 1000 and rows[-2]["tokens"] < 1000 and result.steps == len(rows)


def test_gradient_accumulation_equals_the_same_global_batch_in_one_micro_step(dataset: Path, tmp_path: Path) -> None:
    one = train(dataset, tmp_path / "b4", budget={"max_steps": 3}, data={"batch_size": 4})
    acc = train(dataset, tmp_path / "b2x2", budget={"max_steps": 3}, data={"batch_size": 2, "grad_accum": 2})
    np.testing.assert_allclose(acc.losses, one.losses, rtol=1e-5)
    assert acc.tokens == one.tokens
