"""The training plan a model carries (zwsi_plan.json): written, read, and enforced when a model folder is loaded."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from zwsi.generate import GenerateConfig
from zwsi.generate.pipeline import SlideGenerator
from zwsi.training_plan import PLAN_NAME, TrainingPlan

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/zwsi/conftest.py

GEOMETRY = dict(window_tokens=4, context_tokens=1, overlap_tokens=1, overview_margin=1, factor=4, patch_size=2,
                vae_factor=8, latent_channels=16)


def _plan(**objective: object) -> TrainingPlan:
    return TrainingPlan(dict(GEOMETRY), 2.0, 8.0, {"timesteps": "logit-normal", "shift": 3.0, "prediction": "sample",
                                                    **objective})


def test_plan_round_trips_and_unknown_keys_are_named(tmp_path: Path) -> None:
    plan = _plan()
    plan.write(tmp_path)
    assert TrainingPlan.read(tmp_path) == plan and (plan.shift, plan.prediction) == (3.0, "sample")
    assert TrainingPlan.read(tmp_path / "none") is None
    (tmp_path / PLAN_NAME).write_text('{"plan": {}, "windows": 3}')
    with pytest.raises(ValueError, match=r"unknown keys \['windows'\]"):
        TrainingPlan.read(tmp_path)


def test_check_refuses_other_geometry_or_shift_names_both_values_and_override_warns(caplog) -> None:
    plan = _plan()
    good = GenerateConfig.from_dict({"window_tokens": 4, "context_tokens": 1, "overlap_tokens": 1,
                                     "overview_margin": 1, "factor": 4})
    plan.check(good, patch_size=2, vae_factor=8, latent_channels=16)
    bad = good.merged({"window_tokens": 8, "shift": 1.0})
    with pytest.raises(ValueError, match=r"window_tokens = 8 \(trained with 4\); shift = 1.0 \(trained with 3.0\)"):
        plan.check(bad, patch_size=2, vae_factor=8, latent_channels=16)
    with caplog.at_level(logging.WARNING):
        plan.check(dataclasses.replace(bad, plan_override=True), patch_size=2, vae_factor=8, latent_channels=16)
    assert "window_tokens = 8 (trained with 4)" in caplog.text
    with pytest.raises(ValueError, match=r"patch_size = 4 \(the plan: 2\)"):  # never overridable: other latents
        plan.check(dataclasses.replace(good, plan_override=True), patch_size=4, vae_factor=8, latent_channels=16)


def test_a_model_folder_generates_with_its_plan_and_refuses_a_config_that_disagrees(tiny, tmp_path: Path) -> None:
    gen = SlideGenerator(tiny.transformer, tiny.vae, tiny.text_encoder,
                         config=tiny.config.merged({"overlap_tokens": 1}), shift=3.0, prediction="sample")
    folder = gen.save_pretrained(tmp_path / "model")
    TrainingPlan(dataclasses.asdict(gen.plan_config), 2.0, gen.config.coarsest_mpp,
                 {"shift": 3.0, "prediction": "sample"}).write(folder)
    loaded = SlideGenerator.from_pretrained(folder)
    assert (loaded.shift, loaded.prediction, loaded.config.plan.overlap_tokens) == (3.0, "sample", 1)
    with pytest.raises(ValueError, match=r"overlap_tokens = 0 \(trained with 1\)"):
        SlideGenerator.from_pretrained(folder, overrides={"overlap_tokens": 0})
    assert SlideGenerator.from_pretrained(folder, overrides={"overlap_tokens": 0, "plan_override": True}) is not None
