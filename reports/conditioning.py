"""The exact conditioning text: what the text encoder will tokenize, its token count and what its limit cuts.

The report conditions the model verbatim. The only changes are the recorded normalisation (`reports.normalize`)
and, under the ``redact`` PHI policy, visible ``[REDACTED:KIND]`` placeholders. There is no code path that
expands, paraphrases or "enhances" a report: `reject_prompt_enhancer` turns any config that asks for one into an
error that says why. When the encoder's token limit cuts the text, the cut part is returned and a
`ReportTruncatedWarning` is raised as a warning: never silent.

This module needs only a tokenizer that follows `ConditioningTokenizer` (e.g. `zwsi.text.PromptTokenizer`, or a
`zwsi.text` encoder, whose `.tokenizer` is one); it never imports torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from reports.normalize import NormalizedText, normalize
from reports.phi import PhiScreen, apply_phi_policy
from reports.records import ReportRecord

PROMPT_ENHANCER_DISABLED = (
    "the prompt enhancer / rewriter is disabled by design in Z-WSI: the report conditions the model verbatim, and a "
    "rewriter could invent findings (a grade, a metastasis, a margin status) that the report does not state "
    "(DESIGN.md §5). Remove the key; normalisation only fixes whitespace and OCR artefacts"
)
_ENHANCER_WORDS = ("enhance", "rewrite", "rewriter", "paraphrase", "expand_prompt", "prompt_expansion", "refine_prompt")


@runtime_checkable
class ConditioningTokenizer(Protocol):
    """What `conditioning_text` needs from an encoder's tokenizer."""

    name: str
    max_length: int

    @property
    def num_special_tokens(self) -> int: ...

    def format_with_span(self, text: str) -> tuple[str, int, int]: ...

    def content_offsets(self, formatted: str) -> list[tuple[int, int]]: ...


class ReportTruncatedWarning(UserWarning):
    """The encoder's token limit cut part of a report."""


@dataclass(frozen=True)
class ConditioningText:
    """The conditioning text of one report for one encoder.

    Attributes:
        record_id: the report's id.
        text: the report text that fills the encoder's template (normalised; redacted under ``redact``).
        encoded_string: the exact string the encoder tokenizes (template included, before truncation).
        n_tokens: tokens the encoder receives (template and special tokens included, after truncation).
        n_tokens_full: tokens the whole string would take without the limit.
        max_length: the encoder's limit.
        truncated: True when the limit cut something.
        kept_text: the part of `text` that is encoded.
        cut_text: exactly what the limit cut from `text` ("" when nothing was cut).
        cut_template: the part of the template after the text that was cut too (e.g. Z-Image's
            ``<|im_end|>\\n<|im_start|>assistant\\n``), "" when none.
        encoder: the tokenizer's name.
        normalization: the normalisation edits.
        phi: the PHI screening result (findings, marks, policy).
    """

    record_id: str
    text: str
    encoded_string: str
    n_tokens: int
    n_tokens_full: int
    max_length: int
    truncated: bool
    kept_text: str
    cut_text: str
    cut_template: str
    encoder: str
    normalization: NormalizedText
    phi: PhiScreen

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the edits and findings in full)."""
        return {
            "record_id": self.record_id,
            "conditioning_text": self.text,
            "encoded_string": self.encoded_string,
            "n_tokens": self.n_tokens,
            "n_tokens_full": self.n_tokens_full,
            "max_length": self.max_length,
            "truncated": self.truncated,
            "cut_text": self.cut_text,
            "cut_template": self.cut_template,
            "encoder": self.encoder,
            "normalization": [e.to_dict() for e in self.normalization.edits],
            "phi_policy": self.phi.policy,
            "phi": [f.to_dict() for f in self.phi.findings],
            "redaction_marks": [{"start": m.start, "end": m.end, "text": m.text} for m in self.phi.marks],
        }


def resolve_tokenizer(encoder: Any) -> ConditioningTokenizer:
    """The `ConditioningTokenizer` of `encoder` (the object itself, or its ``.tokenizer``)."""
    for candidate in (encoder, getattr(encoder, "prompt_tokenizer", None), getattr(encoder, "tokenizer", None)):
        if candidate is not None and isinstance(candidate, ConditioningTokenizer):
            return candidate
    raise TypeError(
        f"{type(encoder).__name__} is not a text encoder or tokenizer with max_length, num_special_tokens, "
        f"format_with_span and content_offsets (e.g. zwsi.text.PromptTokenizer or a zwsi.text encoder)"
    )


def conditioning_text(
    record: ReportRecord | str,
    encoder: Any,
    *,
    phi_policy: str = "refuse",
    line_break_marks: bool = True,
    warn: bool = True,
) -> ConditioningText:
    """The exact string that will be encoded for `record`, its token count, and what the limit cuts.

    Steps: normalise (recorded, adds nothing) → PHI policy → the encoder's template → count tokens → report the cut.

    Args:
        record: a report record, or a plain report text.
        encoder: a `ConditioningTokenizer`, or a text encoder whose ``.tokenizer`` is one.
        phi_policy: ``"refuse"`` (default: raise `reports.phi.PhiFoundError`), ``"redact"`` or ``"allow"``.
        line_break_marks: remove ". " line-break marks inside sentences (see `reports.normalize`).
        warn: issue a `ReportTruncatedWarning` when the limit cuts the text.

    Returns:
        The conditioning text with token counts, the cut part, the edits and the PHI findings.

    Raises:
        reports.phi.PhiFoundError: policy ``refuse`` and the text likely holds PHI.
        ValueError: an unknown policy, or a limit too small to hold the template.
    """
    if isinstance(record, str):
        record = ReportRecord(id="text", text=record, source="<text>")
    tokenizer = resolve_tokenizer(encoder)
    normalized = normalize(record.text, line_break_marks=line_break_marks)
    screen = apply_phi_policy(normalized.text, phi_policy, where=f"report {record.id!r}")
    text = screen.text
    formatted, start, end = tokenizer.format_with_span(text)
    offsets = tokenizer.content_offsets(formatted)
    n_special = tokenizer.num_special_tokens
    n_full = len(offsets) + n_special
    limit = tokenizer.max_length
    if n_full <= limit:
        return ConditioningText(record.id, text, formatted, n_full, n_full, limit, False, text, "", "",
                                tokenizer.name, normalized, screen)
    keep = limit - n_special
    prefix_tokens = sum(1 for _, token_end in offsets if token_end <= start)
    if keep <= prefix_tokens:
        raise ValueError(f"encoder {tokenizer.name!r} limit {limit} leaves no room for report text after its template")
    kept_end = offsets[keep - 1][1]
    cut_at = min(max(kept_end - start, 0), len(text))
    result = ConditioningText(
        record.id, text, formatted, limit, n_full, limit, True, text[:cut_at], text[cut_at:],
        formatted[max(kept_end, end):], tokenizer.name, normalized, screen,
    )
    if warn:
        preview = result.cut_text[:60].replace("\n", " ")
        warnings.warn(
            ReportTruncatedWarning(
                f"report {record.id!r}: {n_full} tokens exceed encoder {tokenizer.name!r} limit {limit}; "
                f"{len(result.cut_text)} characters are cut, starting {preview!r}"
            ),
            stacklevel=2,
        )
    return result


def reject_prompt_enhancer(config: Mapping[str, Any], where: str = "config") -> None:
    """Raise if `config` (at any depth) asks for a prompt enhancer, rewriter or paraphraser.

    A key naming one with a false/empty value (``prompt_enhancer: false``) is accepted.

    Raises:
        ValueError: naming the key and why enhancement is disabled.
    """
    for key, value in config.items():
        lowered = str(key).lower()
        if any(word in lowered for word in _ENHANCER_WORDS) and value not in (None, False, "", "none", "off", 0):
            raise ValueError(f"{where}: {key!r} = {value!r} is not allowed: {PROMPT_ENHANCER_DISABLED}")
        if isinstance(value, Mapping):
            reject_prompt_enhancer(value, where=f"{where}.{key}")
