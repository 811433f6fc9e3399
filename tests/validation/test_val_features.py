"""Feature extractors: the offline EfficientNet-Lite0 weights map strictly into timm and classify sensibly;
user weights load through timm strictly; bad names and weights fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from skimage import data

from validation.features import efficientnet_lite0, lite0_weights_path, load_extractor, map_lite0_state_dict

# ImageNet-1k classes
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


def test_lite0_weights_map_onto_every_timm_key_with_the_same_shapes():
    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped = map_lite0_state_dict(source)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert set(mapped) == set(reference) and len(mapped) == 296
    assert all(mapped[k].shape == reference[k].shape for k in reference)


def test_lite0_with_mapped_weights_recognises_a_cat_and_an_espresso():
    model = efficientnet_lite0(with_classifier=True)  # load_state_dict(strict=True) inside
    extractor = load_extractor("efficientnet_lite0")
    x = torch.cat([extractor.preprocess(data.chelsea()[None, :, 75:375]),  # centre squares, resized to 224
                   extractor.preprocess(data.coffee()[None, :, 100:500])])
    with torch.no_grad():
        probs = model(x).softmax(-1)  # (2, 1000)
    top = probs.argmax(-1).tolist()
    assert top[0] in CATS and probs[0, list(CATS)].sum() > 0.8
    assert top[1] in COFFEE and probs[1, top[1]] > 0.5


def test_default_extractor_names_itself_and_gives_1280_features():
    extractor = load_extractor()
    assert "efficientnet_lite0" in extractor.name and "ImageNet" in extractor.name
    feats = extractor(np.zeros((3, 100, 120, 3), np.uint8))
    assert feats.shape == (3, 1280) and feats.dtype == np.float64
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\) uint8; got shape \(100, 120, 3\)"):
        extractor(np.zeros((100, 120, 3), np.uint8))


def test_any_timm_architecture_loads_local_weights_strictly(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False).eval()
    weights = tmp_path / "resnet10t.safetensors"
    save_file(model.state_dict(), str(weights))
    extractor = load_extractor("timm:resnet10t", weights)
    tiles = np.random.default_rng(0).integers(0, 255, (2, 224, 224, 3), dtype=np.uint8)
    model.reset_classifier(0)
    with torch.no_grad():
        expected = model(extractor.preprocess(tiles)).double().numpy()
    np.testing.assert_allclose(extractor(tiles), expected, rtol=1e-5, atol=1e-6)
    assert str(weights) in extractor.name


def test_bad_extractor_requests_fail_with_the_reason(tmp_path):
    with pytest.raises(ValueError, match="unknown feature extractor 'inception'"):
        load_extractor("inception")
    with pytest.raises(ValueError, match="'uni' needs its weights"):
        load_extractor("uni")
    with pytest.raises(ValueError, match="'not_a_net' is not a timm architecture"):
        load_extractor("timm:not_a_net", tmp_path / "w.safetensors")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_extractor("timm:resnet10t", tmp_path / "missing.safetensors")
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(wrong))
    with pytest.raises(ValueError, match="do not match the architecture"):
        load_extractor("timm:resnet10t", wrong)
