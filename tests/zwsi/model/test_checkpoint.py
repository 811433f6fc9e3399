"""Checkpoint IO: hub/diffusers folders (sharded or not), pipeline folders, ComfyUI single files, refusals and errors.

Every test uses the tiny config on CPU; "equal" means bit-equal tensors (torch.equal), never a tolerance.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from zwsi.model.checkpoint import (
    CheckpointError,
    StateDictMismatchError,
    convert_comfyui_state_dict,
    infer_config,
    load_transformer,
    save_pretrained,
)
from zwsi.model.config import S3DiTConfig
from zwsi.model.s3dit import S3DiT

TINY = S3DiTConfig.preset("tiny")


def _random_model(seed: int = 0) -> S3DiT:
    """A tiny S3DiT with every tensor random (pad tokens, norms and final layer too), so no mix-up goes unseen."""
    model = S3DiT(TINY)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            scale = 0.7 / p.shape[-1] ** 0.5 if p.ndim >= 2 else 0.3
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def _inputs(seed: int = 1) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(16, 1, 8, 8, generator=gen), torch.randn(16, 1, 6, 10, generator=gen)]
    t = torch.tensor([0.3, 0.8])
    caps = [torch.randn(7, TINY.cap_feat_dim, generator=gen), torch.randn(40, TINY.cap_feat_dim, generator=gen)]
    return x, t, caps


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def _diffusers_tiny(seed: int = 0):  # noqa: ANN202 - diffusers type
    from diffusers import ZImageTransformer2DModel

    kwargs = {k: v for k, v in TINY.to_dict().items() if k != "siglip_feat_dim"}
    model = ZImageTransformer2DModel(**kwargs)
    model.load_state_dict(_random_model(seed).state_dict())
    return model.eval()


@pytest.fixture(scope="module")
def model() -> S3DiT:
    return _random_model()


# ---------------------------------------------------------------------------------------------- round trips


def test_save_load_round_trip_equal_tensors_and_outputs(model: S3DiT, tmp_path: Path) -> None:
    out = save_pretrained(model, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = load_transformer(out, dtype=torch.float32)
    assert isinstance(loaded, S3DiT) and loaded.config == TINY and not loaded.training
    _assert_same_weights(model.state_dict(), loaded.state_dict())
    assert all(p.requires_grad and p.device.type == "cpu" for p in loaded.parameters())
    x, t, caps = _inputs()
    with torch.no_grad():
        for a, b in zip(model.forward_t2i(x, t, caps), loaded.forward_t2i(x, t, caps), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(("dtype", "expected"), [("bf16", torch.bfloat16), (torch.float16, torch.float16)])
def test_load_casts_every_tensor(model: S3DiT, tmp_path: Path, dtype: object, expected: torch.dtype) -> None:
    loaded = load_transformer(save_pretrained(model, tmp_path), dtype=dtype)  # type: ignore[arg-type]
    _assert_same_weights({k: v.to(expected) for k, v in model.state_dict().items()}, loaded.state_dict())


def test_loaded_model_owns_its_memory(model: S3DiT, tmp_path: Path) -> None:
    """Safetensors reads are memory-mapped; the loaded weights must not change when the file is overwritten."""
    save_pretrained(model, tmp_path)
    loaded = load_transformer(tmp_path, dtype=torch.float32)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4096:] = bytes(4096)  # zero the tail in place (same inode, same mapping)
    with open(weights, "r+b") as f:
        f.write(data)
    _assert_same_weights(model.state_dict(), loaded.state_dict())


def test_sharded_index_loads_and_stale_shards_are_removed(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path, max_shard_size=800_000)  # ~2.4 MB of fp32 weights -> 3+ shards
    shards = sorted(tmp_path.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(shards) >= 2
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert sorted(index["weight_map"]) == sorted(model.state_dict())
    for path in (tmp_path, tmp_path / "diffusion_pytorch_model.safetensors.index.json"):
        _assert_same_weights(model.state_dict(), load_transformer(path, dtype=torch.float32).state_dict())
    # Saving again unsharded into the same folder leaves only the new files (an old index would contradict them).
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    _assert_same_weights(model.state_dict(), load_transformer(tmp_path, dtype=torch.float32).state_dict())


def test_pipeline_folder_with_transformer_subfolder(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path / "transformer", max_shard_size=1_000_000)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    _assert_same_weights(model.state_dict(), load_transformer(tmp_path, dtype=torch.float32).state_dict())


# ---------------------------------------------------------------------------------------------- diffusers interop


def test_diffusers_saved_folder_loads_strictly_into_ours(tmp_path: Path) -> None:
    reference = _diffusers_tiny(seed=3)
    reference.save_pretrained(tmp_path, max_shard_size="1MB")  # diffusers' own sharding and index
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    ours = load_transformer(tmp_path, dtype=torch.float32)
    _assert_same_weights(reference.state_dict(), ours.state_dict())
    x, t, caps = _inputs()
    with torch.no_grad():
        expected = reference(x, t, caps, return_dict=False)[0]
        got = ours.forward_t2i(x, t, caps)
    for a, b in zip(expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_our_folder_loads_in_diffusers(model: S3DiT, tmp_path: Path) -> None:
    from diffusers import ZImageTransformer2DModel

    save_pretrained(model, tmp_path, max_shard_size=1_000_000)
    reference = ZImageTransformer2DModel.from_pretrained(tmp_path).eval()
    assert reference.config.dim == TINY.dim and list(reference.config.axes_lens) == list(TINY.axes_lens)
    _assert_same_weights(model.state_dict(), reference.state_dict())


# ---------------------------------------------------------------------------------------------- ComfyUI single file


def _to_comfyui(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of zimage-architecture.md §2's mapping, written out independently of the loader."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith(("attention.to_k.weight", "attention.to_v.weight")):
            continue
        if k.endswith("attention.to_q.weight"):
            stem = k.removesuffix("to_q.weight")
            k, v = stem + "qkv.weight", torch.cat([v, state_dict[stem + "to_k.weight"], state_dict[stem + "to_v.weight"]])
        k = k.replace("all_x_embedder.2-1.", "x_embedder.").replace("all_final_layer.2-1.", "final_layer.")
        k = k.replace(".attention.to_out.0.", ".attention.out.")
        k = k.replace(".attention.norm_q.", ".attention.q_norm.").replace(".attention.norm_k.", ".attention.k_norm.")
        out["model.diffusion_model." + k] = v.clone()
    out["model.diffusion_model.norm_final.weight"] = torch.ones(TINY.dim)  # the stray tensor some exports carry
    return out


def test_comfyui_single_file_loads_every_tensor_exactly(model: S3DiT, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    comfy = _to_comfyui(model.state_dict())
    assert "model.diffusion_model.layers.0.attention.qkv.weight" in comfy
    assert comfy["model.diffusion_model.layers.0.attention.qkv.weight"].shape == (3 * TINY.dim, TINY.dim)
    file = tmp_path / "z_image_tiny_comfyui.safetensors"
    save_file(comfy, file)
    with caplog.at_level(logging.INFO, logger="zwsi.model.checkpoint"):
        loaded = load_transformer(file, dtype=torch.float32)  # no config.json: inferred from the shapes
    assert loaded.config == TINY
    assert "inferred from tensor shapes" in caplog.text and "ComfyUI" in caplog.text
    _assert_same_weights(model.state_dict(), loaded.state_dict())
    # With a preset the log names the argument instead.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="zwsi.model.checkpoint"):
        load_transformer(file, dtype="fp32", config="tiny")
    assert "from the config argument (tiny)" in caplog.text


def test_comfyui_conversion_matches_diffusers_converter(model: S3DiT) -> None:
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers

    comfy = _to_comfyui(model.state_dict())
    ours = convert_comfyui_state_dict(comfy)
    reference = convert_z_image_transformer_checkpoint_to_diffusers(dict(comfy))
    _assert_same_weights(reference, ours)
    _assert_same_weights(model.state_dict(), ours)


def test_infer_config_recovers_the_turbo_preset() -> None:
    turbo = S3DiTConfig.preset("z-image-turbo")
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in S3DiT(turbo).state_dict().items()}
    cfg, assumed = infer_config(shapes)
    assert cfg == turbo
    assert "axes_dims" in assumed and "rope_theta" in assumed


# ---------------------------------------------------------------------------------------------- errors


def test_mismatch_lists_missing_unexpected_and_shapes(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = load_file(file)
    del sd["layers.1.feed_forward.w2.weight"]
    sd["layers.7.attention.to_q.weight"] = torch.zeros(2, 2)
    sd["cap_embedder.1.bias"] = torch.zeros(TINY.dim + 1)
    save_file(sd, file)
    with pytest.raises(StateDictMismatchError, match="1 missing, 1 unexpected, 1 shape mismatch") as info:
        load_transformer(tmp_path)
    message = str(info.value)
    assert "layers.1.feed_forward.w2.weight [64, 170]" in message
    assert "layers.7.attention.to_q.weight [2, 2]" in message
    assert "cap_embedder.1.bias: [65] vs [64]" in message
    assert info.value.missing == ["layers.1.feed_forward.w2.weight"]
    assert info.value.unexpected == ["layers.7.attention.to_q.weight"]
    assert info.value.mismatched == {"cap_embedder.1.bias": ((65,), (64,))}


def test_wrong_config_for_the_weights_is_a_shape_mismatch(model: S3DiT, tmp_path: Path) -> None:
    file = tmp_path / "tiny.safetensors"
    save_file(model.state_dict(), file)
    with pytest.raises(StateDictMismatchError, match=r"config argument.*69 shape mismatch.*probably does not describe(.|\n)*"
                       r"cap_pad_token: \[1, 64\] vs \[1, 3840\](.|\n)*and 49 more"):
        load_transformer(file, config=S3DiTConfig(dim=3840, n_layers=2, n_refiner_layers=1, cap_feat_dim=32))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".ckpt"])
def test_pickle_checkpoints_are_refused(model: S3DiT, tmp_path: Path, suffix: str) -> None:
    file = tmp_path / f"model{suffix}"
    torch.save(model.state_dict(), file)
    with pytest.raises(CheckpointError, match=r"refusing .*pickle.*arbitrary code.*Convert it to safetensors"):
        load_transformer(file)


def test_pickle_in_a_folder_is_refused(model: S3DiT, tmp_path: Path) -> None:
    torch.save(model.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    TINY.to_json(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="arbitrary code"):
        load_transformer(tmp_path)


def test_pickle_opt_in_reads_weights_only(model: S3DiT, tmp_path: Path) -> None:
    file = tmp_path / "third_party.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, file)
    loaded = load_transformer(file, dtype=torch.float32, config="tiny", allow_pickle_weights_only=True)
    _assert_same_weights(model.state_dict(), loaded.state_dict())


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch PWNED",))


def test_pickle_opt_in_does_not_execute_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.save({"x_pad_token": torch.zeros(1, 64), "evil": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"evil\.pth with torch\.load\(weights_only=True\)"):
        load_transformer(tmp_path / "evil.pth", config="tiny", allow_pickle_weights_only=True)
    assert not (tmp_path / "PWNED").exists()


def test_truncated_safetensors_names_the_file(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path, max_shard_size=800_000)
    shard = sorted(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*truncated or corrupt"):
        load_transformer(tmp_path)
    shard.write_bytes(b"\x00" * 5)
    with pytest.raises(CheckpointError, match=rf"{shard.name}.*truncated or corrupt"):
        load_transformer(tmp_path)


def test_index_naming_a_missing_shard(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path, max_shard_size=800_000)
    gone = sorted(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))[0]
    gone.unlink()
    with pytest.raises(CheckpointError, match=rf"names weight files that are missing: \['{gone.name}'\]"):
        load_transformer(tmp_path)


def test_unknown_config_key_is_an_error(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "_diffusers_version": "0.36.0", "n_layer": 2}))
    with pytest.raises(ValueError, match=r"config.json: unknown config key\(s\) \['n_layer'\]"):
        load_transformer(tmp_path)


def test_config_argument_must_agree_with_config_json(model: S3DiT, tmp_path: Path) -> None:
    save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"disagrees with .*config.json on \['axes_dims', 'cap_feat_dim'"):
        load_transformer(tmp_path, config="z-image-turbo")


def test_bad_arguments(model: S3DiT, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_transformer(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"no transformer weights in .*found \[\]"):
        load_transformer(tmp_path)
    save_pretrained(model, tmp_path)
    with pytest.raises(ValueError, match=r"dtype=torch.float64 is not supported; expected one of \['bf16'"):
        load_transformer(tmp_path, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown S3DiT preset 'huge'"):
        load_transformer(tmp_path / "diffusion_pytorch_model.safetensors", config="huge")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 16}))
    with pytest.raises(CheckpointError, match="describes a AutoencoderKL, not the Z-Image transformer"):
        load_transformer(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        load_transformer(tmp_path)


def test_save_keeps_files_it_did_not_write(model: S3DiT, tmp_path: Path) -> None:
    """A re-save replaces its own shards and index, and leaves other files (a variant, notes) alone."""
    (tmp_path / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"other")
    (tmp_path / "README.md").write_text("notes")
    save_pretrained(model, tmp_path, max_shard_size=800_000)
    save_pretrained(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "README.md", "config.json", "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors"]
