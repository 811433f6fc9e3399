"""Training config: YAML validated into dataclasses; unknown keys, wrong types and prompt enhancers are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from zwsi.train.config import from_dict, load_train_config

CONFIGS = REPO_ROOT / "configs" / "train"


@pytest.mark.parametrize("name", ["tiny-cpu", "lora-z-image-turbo"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_train_config(CONFIGS / f"{name}.yaml")
    assert cfg.name == name
    if name == "lora-z-image-turbo":
        assert cfg.control.policy == "lora" and cfg.control.lora.rank == 32
        assert cfg.control.lora.targets == ["to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"]
        assert cfg.precision == "bf16" and cfg.model.gradient_checkpointing and cfg.optim.lr == 1e-4
    else:
        assert cfg.model.preset == "tiny" and cfg.model.overrides == {"cap_feat_dim": 384}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_train_config_loads_under_its_own_name(path: Path) -> None:
    assert load_train_config(path).name == path.stem


def test_gpu_recipe_trains_what_the_cpu_build_prepares() -> None:
    """build.sh --device cuda trains on the CPU build's dataset: patch and objective must be the same."""
    cpu, gpu = (load_train_config(CONFIGS / f"{name}.yaml") for name in ("zwsi-small", "zwsi-small-gpu"))
    assert cpu.model.overrides["all_patch_size"] == gpu.model.overrides["all_patch_size"] == [2]
    assert (cpu.objective.shift, cpu.objective.prediction, cpu.objective.timesteps) == (1.0, "sample", "logit-normal")
    assert (gpu.objective.shift, gpu.objective.prediction, gpu.objective.timesteps) == (1.0, "sample", "logit-normal")
    assert cpu.data.level_weights == gpu.data.level_weights == [0.7, 0.3]


def test_unknown_key_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['optim.lrate'\]; valid keys at optim are \[.*'lr'"):
        from_dict({"model": {"preset": "tiny"}, "optim": {"lrate": 1e-3}})
    with pytest.raises(ValueError, match=r"\['control.lora.rnk'\]"):
        from_dict({"model": {"preset": "tiny"}, "control": {"lora": {"rnk": 4}}})
    with pytest.raises(ValueError, match=r"\['epochs'\]"):
        from_dict({"model": {"preset": "tiny"}, "epochs": 3})


def test_prompt_enhancer_anywhere_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: tiny}\ndata:\n  prompt_enhancer: true\n")
    with pytest.raises(ValueError, match=r"'prompt_enhancer' = True is not allowed: the prompt enhancer .* disabled by design"):
        load_train_config(path)
    with pytest.raises(ValueError, match="disabled by design"):
        from_dict({"model": {"preset": "tiny"}, "prompt_enhancer": "qwen"})


def test_types_and_ranges_are_checked() -> None:
    with pytest.raises(ValueError, match="config: data.batch_size must be an integer, got 'four'"):
        from_dict({"model": {"preset": "tiny"}, "data": {"batch_size": "four"}})
    with pytest.raises(ValueError, match=r"control.policy = 'qlora'; expected one of \['full', 'lora'\]"):
        from_dict({"model": {"preset": "tiny"}, "control": {"policy": "qlora"}})
    with pytest.raises(ValueError, match=r"control.freeze \['text'\] unknown"):
        from_dict({"model": {"preset": "tiny"}, "control": {"freeze": ["text"]}})
    with pytest.raises(ValueError, match="control.lora.targets .*'to_qkv'"):
        from_dict({"model": {"preset": "tiny"}, "control": {"lora": {"targets": ["to_qkv"]}}})
    with pytest.raises(ValueError, match="data.report_drop must be in"):
        from_dict({"model": {"preset": "tiny"}, "data": {"report_drop": 1.5}})
    with pytest.raises(ValueError, match="give exactly one of path or preset"):
        from_dict({})
    cfg = from_dict({"model": {"preset": "tiny"}, "optim": {"lr": 1}}, overrides={"budget": {"max_steps": 7}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.budget.max_steps == 7
    with pytest.raises(ValueError, match=r"config: optim.lr must be a number, got '1e-4' \(str\)"):
        from_dict({"model": {"preset": "tiny"}, "optim": {"lr": "1e-4"}})


def test_yaml_reads_exponents_without_a_dot_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: tiny}\noptim: {lr: 1e-4, betas: [0.9, 0.95]}\n")  # YAML 1.1 reads 1e-4 as a string
    assert load_train_config(path).optim.lr == 1e-4
