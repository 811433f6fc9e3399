"""Pickled feature-extractor and text-encoder weights are refused by the project (unpickling can run code)."""

from __future__ import annotations

import pytest
import torch

from validation.features import read_state_dict
from zwsi.text.encoders import refuse_pickled_weights


def test_pickled_feature_extractor_weights_are_refused_unless_allowed(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(ValueError, match=r"refusing the pickled feature-extractor weights .*pytorch_model.bin.*"
                                         r"--features-allow-pickle"):
        read_state_dict(path)
    assert torch.equal(read_state_dict(path, allow_pickle=True)["w"], torch.ones(2))


def test_pickled_text_encoder_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    torch.save({"w": torch.ones(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"refusing the pickled text-encoder weights .*pytorch_model.bin"):
        refuse_pickled_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # a safetensors file beside it is what gets loaded
    refuse_pickled_weights(tmp_path)
