"""S3DiTConfig: hub config.json fields, validation, presets."""

from __future__ import annotations

import json

import pytest

from zwsi.model.config import S3DiTConfig

# The Turbo hub transformer/config.json as quoted in zimage-architecture.md §1 (with its `_` metadata keys).
TURBO_HUB_CONFIG = {
    "_class_name": "ZImageTransformer2DModel",
    "_diffusers_version": "0.36.0.dev0",
    "all_f_patch_size": [1],
    "all_patch_size": [2],
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
    "cap_feat_dim": 2560,
    "dim": 3840,
    "in_channels": 16,
    "n_heads": 30,
    "n_kv_heads": 30,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "norm_eps": 1e-05,
    "qk_norm": True,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
}


def test_hub_config_equals_turbo_preset_and_ignores_underscore_keys():
    cfg = S3DiTConfig.from_dict(TURBO_HUB_CONFIG)
    assert cfg == S3DiTConfig.preset("z-image-turbo")
    assert cfg.head_dim == 128 and cfg.ffn_hidden_dim == 10240 and cfg.patch_dim == 64 and cfg.patch_key == "2-1"


def test_unknown_key_is_an_error_naming_it_and_the_valid_fields():
    with pytest.raises(ValueError, match=r"S3DiTConfig: unknown config key\(s\) \['n_layer'\]; valid keys at top level are \[.*'n_layers'"):
        S3DiTConfig.from_dict({**TURBO_HUB_CONFIG, "n_layer": 30})


def test_json_round_trip(tmp_path):
    path = tmp_path / "config.json"
    cfg = S3DiTConfig.preset("tiny")
    cfg.to_json(path)
    on_disk = json.loads(path.read_text())
    assert on_disk["_class_name"] == "ZImageTransformer2DModel" and on_disk["axes_dims"] == [8, 12, 12]
    assert S3DiTConfig.from_json(path) == cfg
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_presets():
    tiny = S3DiTConfig.preset("tiny")
    assert (tiny.dim, tiny.n_layers, tiny.n_refiner_layers, tiny.n_heads, tiny.cap_feat_dim) == (64, 2, 1, 2, 32)
    assert tiny.axes_dims == (8, 12, 12) and tiny.axes_lens == (1536, 512, 512) and tiny.head_dim == 32
    with pytest.raises(ValueError, match=r"unknown S3DiT preset 'z-image'; expected one of \['tiny', 'z-image-turbo'"):
        S3DiTConfig.preset("z-image")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"dim": 100, "n_heads": 3, "n_kv_heads": 3}, r"dim=100 must be divisible by n_heads=3"),
        ({"axes_dims": (8, 8, 8)}, r"sum\(axes_dims\)=24 must equal head_dim = dim/n_heads = 32"),
        ({"n_kv_heads": 1}, r"n_kv_heads=1 must equal n_heads=2"),
        ({"axes_dims": (8, 11, 13)}, r"must all be even"),
        ({"siglip_feat_dim": 1152}, r"siglip_feat_dim=1152: the Omni/SigLIP variant is not supported"),
    ],
)
def test_invalid_values_raise(override, message):
    with pytest.raises(ValueError, match=message):
        S3DiTConfig(**{**S3DiTConfig.preset("tiny").to_dict(), **override})


def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json must hold a JSON object, got list"):
        S3DiTConfig.from_json(path)
