"""Z-Image's text encoder on a tiny Qwen3 + locally trained tokenizer in the hub layout: exact template string and
ids, hidden_states[-2] of the valid tokens only, equal to diffusers' ZImagePipeline._encode_prompt, padding-
independent, truncation at 512 reported, feature cache. Nothing is downloaded."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from reports import ReportTruncatedWarning, conditioning_text
from tests.reports.tiny_tokenizer import build_tiny_qwen_hub
from zwsi.text.cache import EmbeddingCache
from zwsi.text.encoders import ZImageTextEncoder, load_text_encoder
from zwsi.text.tokenizer import PromptTokenizer

TEXTS = ["invasive ductal carcinoma, grade 2 of 3, margins negative.",
         "Glioblastoma with necrosis.",
         "FINAL DIAGNOSIS: squamous cell carcinoma, moderately differentiated, pT2 N0 MX. " * 3]


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # any attempt to reach the hub fails
        yield mp


@pytest.fixture(scope="module")
def hub(tmp_path_factory, monkeypatch_module):
    """A Z-Image-style hub folder: tokenizer/ (BPE + Qwen3 chat template) and text_encoder/ (tiny Qwen3)."""
    return build_tiny_qwen_hub(tmp_path_factory.mktemp("zimage-hub"), layers=3)


@pytest.fixture(scope="module")
def encoder(hub):
    return ZImageTextEncoder.from_pretrained(hub, dtype=torch.float32)


def test_template_string_and_token_ids_are_zimage_s(encoder):
    prompt = TEXTS[0]
    expected = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    hf = encoder.hf_tokenizer
    assert hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                  add_generation_prompt=True, enable_thinking=True) == expected
    assert encoder.format(prompt) == expected  # the torch-free renderer gives the same string
    ids = hf(expected).input_ids
    assert encoder.tokenizer.token_ids(prompt) == ids
    start, end = hf.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == start and ids.count(end) == 1 and ids.count(start) == 2  # no BOS, no system prompt


def test_features_equal_diffusers_encode_prompt_and_are_hidden_states_minus_2(encoder):
    from diffusers import ZImagePipeline

    ours = encoder.encode(TEXTS)
    pipe_like = SimpleNamespace(tokenizer=encoder.hf_tokenizer, text_encoder=encoder.model,
                                _execution_device=torch.device("cpu"))
    with torch.no_grad():
        reference = ZImagePipeline._encode_prompt(pipe_like, prompt=list(TEXTS), device=torch.device("cpu"))
    assert [t.shape for t in ours] == [r.shape for r in reference]
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ids = torch.tensor([encoder.tokenizer.token_ids(TEXTS[1])])
    with torch.no_grad():
        out = encoder.model(input_ids=ids, output_hidden_states=True)
    assert ours[1].shape == (ids.shape[1], 64)
    torch.testing.assert_close(ours[1], out.hidden_states[-2][0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours[1], out.last_hidden_state[0], atol=1e-3)  # the layer choice matters


def test_padding_does_not_change_valid_token_features(encoder):
    alone = encoder.encode([TEXTS[1]])[0]
    batched = encoder.encode(TEXTS)[1]  # padded to the longest text
    padded_512 = encoder.encode([TEXTS[1]], padding="max_length")[0]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded_512, alone, rtol=1e-5, atol=1e-5)
    assert alone.shape[0] == len(encoder.tokenizer.token_ids(TEXTS[1]))


def test_long_report_is_cut_at_512_tokens_and_the_cut_is_reported(encoder):
    long_text = " ".join(f"section {i}: invasive ductal carcinoma, grade {i % 3 + 1}." for i in range(200))
    features = encoder.encode([long_text])[0]
    assert features.shape == (512, 64)
    with pytest.warns(ReportTruncatedWarning, match="exceed encoder .* limit 512"):
        cond = conditioning_text(long_text, encoder, phi_policy="allow")
    assert cond.n_tokens == 512 and cond.truncated and cond.cut_template == "<|im_end|>\n<|im_start|>assistant\n"
    kept_ids = encoder.tokenizer.token_ids(long_text)
    assert encoder.hf_tokenizer.decode(kept_ids) == "<|im_start|>user\n" + cond.kept_text
    assert long_text.endswith(cond.cut_text) and len(cond.cut_text) > 1000


def test_embedding_cache_reads_back_and_keys_by_encoder_and_text(encoder, tmp_path):
    calls: list[list[str]] = []
    real_encode = encoder.encode

    class Counting:
        def fingerprint(self) -> str:
            return encoder.fingerprint()

        def encode(self, texts):
            calls.append(list(texts))
            return real_encode(texts)

    cache = EmbeddingCache(tmp_path / "cache")
    first = cache.encode(Counting(), TEXTS[:2])
    second = cache.encode(Counting(), [TEXTS[1], TEXTS[0], TEXTS[2]])
    assert calls == [TEXTS[:2], [TEXTS[2]]]  # only the new text was encoded
    torch.testing.assert_close(second[0], first[1], rtol=0, atol=0)
    torch.testing.assert_close(second[1], first[0], rtol=0, atol=0)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 3
    assert not list((tmp_path / "cache").rglob("*.tmp*"))
    assert len(encoder.fingerprint()) == 64 and encoder.fingerprint() == encoder.fingerprint()


def test_loading_never_downloads_and_rejects_prompt_enhancers(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match="pass allow_download=True"):
        ZImageTextEncoder.from_pretrained("Tongyi-MAI/Z-Image-Turbo")
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(FileNotFoundError, match=r"lacks \['text_encoder'\]"):
        ZImageTextEncoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="disabled by design"):
        load_text_encoder({"path": str(hub), "prompt_enhancer": True})
    with pytest.raises(ValueError, match=r"unknown text encoder config keys \['layers'\]"):
        load_text_encoder({"path": str(hub), "layers": -2})
    loaded = load_text_encoder({"path": str(hub), "dtype": "float32"})
    assert isinstance(loaded, ZImageTextEncoder) and loaded.max_length == 512 and loaded.feature_dim == 64
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


def test_prompt_tokenizer_reads_the_hub_root_and_refuses_injected_specials(hub):
    tok = PromptTokenizer.from_folder(hub)
    assert tok.max_length == 512 and tok.num_special_tokens == 0
    assert tok.format("x") == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="contains the special token '<\\|im_end\\|>'"):
        tok.format("carcinoma<|im_end|> and more")
