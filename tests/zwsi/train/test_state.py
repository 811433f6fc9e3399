"""Training state: the EMA's arithmetic, optimizer and RNG state through safetensors + JSON and back exactly,
checkpoints that appear whole or not at all, and how --resume finds them."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from zwsi.train.state import (
    EMA,
    checkpoint_name,
    flatten_optimizer_state,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    resolve_resume,
    rng_state,
    run_folder_of,
    set_rng_state,
    unflatten_optimizer_state,
    write_checkpoint,
)


def test_ema_averages_with_its_decay_warms_up_and_swaps_weights_in_and_out() -> None:
    p = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    ema = EMA({"p": p}, decay=0.9)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update({"p": p})
    torch.testing.assert_close(ema.shadow["p"], torch.tensor([0.1, 9.1]))  # 0.9 * old + 0.1 * new
    warm = EMA({"p": p}, decay=0.99, warmup=True)
    assert [warm.decay_at(k) for k in (0, 8, 10_000)] == [0.1, 0.5, 0.99]  # min(decay, (1 + k) / (10 + k))
    with ema.applied({"p": p}):
        torch.testing.assert_close(p.detach(), torch.tensor([0.1, 9.1]))
    assert torch.equal(p.detach(), torch.tensor([1.0, 1.0]))  # restored after the block
    with pytest.raises(ValueError, match=r"missing \['p'\], extra \['q'\]"):
        ema.load_state_dict({"q": torch.zeros(2)})


def test_optimizer_state_round_trips_through_tensors_and_json() -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95))
    for _ in range(2):
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
        opt.zero_grad()
    state = get_optimizer_state_dict(model, opt)
    tensors, meta = flatten_optimizer_state(state)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    back = unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))  # the JSON part survives a file
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert set(back["state"]) == set(state["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    for name, entries in state["state"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(back["state"][name][key]), torch.as_tensor(value)), (name, key)


def test_rng_state_restores_every_generator() -> None:
    tensors, meta = rng_state()
    meta = json.loads(json.dumps(meta))
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(tensors, meta)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def _write(folder: Path, step: int, model_files=lambda tmp: (tmp / "model").mkdir()) -> Path:  # noqa: ANN001
    return write_checkpoint(folder / checkpoint_name(step), is_main=True, rank=0, model_files=model_files,
                            optimizer_state={"state": {}, "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]},
                            scheduler_state={"last_epoch": step, "lr_lambdas": [None]},
                            ema_state={"w": torch.ones(2)}, state={"step": step}, barrier=lambda: None)


def test_a_checkpoint_appears_whole_and_is_read_back(tmp_path: Path) -> None:
    root = tmp_path / "run" / "checkpoints"
    ck = _write(root, 20)
    assert ck.name == "step-0000020" and not any(p.name.startswith(".") for p in root.iterdir())
    got = read_checkpoint(ck, rank=0)
    assert got["state"] == {"step": 20} and got["scheduler"]["last_epoch"] == 20
    assert torch.equal(got["ema"]["w"], torch.ones(2)) and got["rng"] is not None
    assert got["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.99)

    def crash(tmp: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _write(root, 30, model_files=crash)
    assert not (root / "step-0000030").exists()  # only a hidden temporary folder is left
    assert list_checkpoints(root) == [ck]


def test_resume_finds_the_newest_checkpoint_and_prune_keeps_the_newest(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for step in (100, 20, 5):
        _write(run / "checkpoints", step)
    (run / "checkpoints" / "step-0000900").mkdir()  # incomplete: no state.json
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-0000005", "step-0000020", "step-0000100"]
    newest = run / "checkpoints" / "step-0000100"
    assert resolve_resume(run) == newest and resolve_resume(newest) == newest
    assert run_folder_of(newest) == run and run_folder_of(tmp_path / "loose" / "step-0000001") == tmp_path / "loose"
    prune_checkpoints(run / "checkpoints", keep=2)
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-0000020", "step-0000100"]
    with pytest.raises(FileNotFoundError, match=r"--resume .*empty: no checkpoint \(a folder with state.json\)"):
        resolve_resume(tmp_path / "empty")
    legacy = tmp_path / "old-vae" / "checkpoints" / "step_0000200"
    legacy.mkdir(parents=True)
    (legacy / "state.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="step_0000200 is a checkpoint of an earlier zwsi train-vae"):
        resolve_resume(tmp_path / "old-vae")
