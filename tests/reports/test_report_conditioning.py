"""conditioning_text: the exact encoded string, token count, and exactly what the limit cuts (with a warning);
no prompt enhancer anywhere. Uses a tiny locally trained Qwen-style tokenizer (no torch, no download)."""

from __future__ import annotations

import sys
import warnings

import pytest

from reports import (
    PhiFoundError,
    ReportRecord,
    ReportTruncatedWarning,
    added_words,
    conditioning_text,
    reject_prompt_enhancer,
)
from tests.reports.tiny_tokenizer import build_tiny_qwen_tokenizer
from zwsi.text.tokenizer import ZIMAGE_PROMPT_TEMPLATE, PromptTokenizer

REPORT = ("FINAL DIAGNOSIS: Left breast, lumpectomy: invasive ductal carcinoma, grade 2 of 3,\n"
          "measuring 2.1 cm. Margins negative. Lymph nodes 0/3. pT2 N0 MX.")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> PromptTokenizer:
    return PromptTokenizer.from_folder(build_tiny_qwen_tokenizer(tmp_path_factory.mktemp("hub") / "tokenizer"))


def test_fitting_report_is_encoded_verbatim_in_zimage_template(tokenizer):
    record = ReportRecord(id="r1", text=REPORT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no truncation warning for a report that fits
        cond = conditioning_text(record, tokenizer)
    assert cond.text == REPORT  # nothing to normalise: verbatim
    assert cond.encoded_string == ZIMAGE_PROMPT_TEMPLATE.format(text=REPORT)
    assert cond.n_tokens == cond.n_tokens_full == len(tokenizer.token_ids(REPORT)) < 512
    assert (cond.truncated, cond.cut_text, cond.cut_template) == (False, "", "")


def test_truncation_reports_exactly_what_was_cut(tokenizer):
    small = PromptTokenizer(tokenizer.tokenizer_json, max_length=40, template=tokenizer.template, name="tiny-40")
    with pytest.warns(ReportTruncatedWarning, match=r"report 'r1': \d+ tokens exceed encoder 'tiny-40' limit 40"):
        cond = conditioning_text(ReportRecord(id="r1", text=REPORT), small)
    assert cond.truncated and cond.n_tokens == 40 < cond.n_tokens_full
    assert cond.kept_text + cond.cut_text == cond.text and cond.cut_text
    assert cond.cut_template == "<|im_end|>\n<|im_start|>assistant\n"  # Z-Image cuts the template's tail too
    ids = small.token_ids(REPORT)
    assert len(ids) == 40
    # the 40 ids the encoder receives decode to exactly the template prefix + the kept text
    assert small._tokenizer.decode(ids, skip_special_tokens=False) == "<|im_start|>user\n" + cond.kept_text


def test_conditioning_words_never_exceed_source_and_phi_policy_applies(tokenizer):
    text = "Patient Name: John Smith.  Diagnosis: adeno-\ncarcinoma,   moderately differentiated."
    with pytest.raises(PhiFoundError, match="name at"):
        conditioning_text(text, tokenizer)
    redacted = conditioning_text(text, tokenizer, phi_policy="redact")
    assert redacted.text == "Patient Name: [REDACTED:NAME]. Diagnosis: adeno-carcinoma, moderately differentiated."
    allowed = conditioning_text(text, tokenizer, phi_policy="allow")
    assert added_words(text, allowed.text) == [] and [f.text for f in allowed.phi.findings] == ["John Smith"]
    assert [e.kind for e in allowed.normalization.edits] == ["whitespace", "line-break hyphen", "whitespace"]


def test_prompt_enhancer_config_is_an_error_that_says_why():
    reject_prompt_enhancer({"prompt_enhancer": False, "steps": 8})  # explicitly off is fine
    with pytest.raises(ValueError, match=r"generation.text: 'enhance_prompt' = True is not allowed: .*disabled by design"):
        reject_prompt_enhancer({"text": {"enhance_prompt": True}}, where="generation")
    with pytest.raises(ValueError, match="could invent findings"):
        reject_prompt_enhancer({"prompt_rewriter": "qwen-7b"})


def test_reports_package_does_not_import_torch():
    import subprocess

    code = "import sys, reports, reports.conditioning; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
