"""The text side of a text encoder, without torch: the exact string it tokenizes, its token count and its cut.

`PromptTokenizer` reads a local tokenizer folder with the fast `tokenizers` library (no torch, no transformers
import, so `zwsi report check` stays quick) and, for chat models such as Z-Image's Qwen3, renders the folder's chat
template the way transformers does (`apply_chat_template(..., add_generation_prompt=True, enable_thinking=True)`).
It implements `reports.conditioning.ConditioningTokenizer`. Its ids equal the transformers tokenizer's
(tested in tests/zwsi/text/).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

ZIMAGE_MAX_LENGTH = 512
# Z-Image's prompt format (Qwen3 chat template, one user turn, generation prompt, thinking enabled = no <think>).
ZIMAGE_PROMPT_TEMPLATE = "<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
_SENTINEL = "\u2063ZWSI_REPORT_TEXT\u2063"


@dataclass(frozen=True)
class TemplateParts:
    """A prompt template split around the user text: formatted = prefix + text + suffix."""

    prefix: str
    suffix: str


def render_chat_template(template: str, text: str, **kwargs: object) -> str:
    """Render a Hugging Face chat template for one user turn, as transformers' `apply_chat_template` does.

    Args:
        template: the Jinja chat template.
        text: the user message.
        **kwargs: template variables, e.g. ``add_generation_prompt=True, enable_thinking=True``.
    """
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=[{"role": "user", "content": text}], **kwargs)


def chat_template_parts(template: str) -> TemplateParts:
    """Split Z-Image's rendering of `template` (generation prompt, thinking enabled) around the user text."""
    rendered = render_chat_template(template, _SENTINEL, add_generation_prompt=True, enable_thinking=True)
    if rendered.count(_SENTINEL) != 1:
        raise ValueError("the chat template does not place the user message exactly once; cannot locate the report text")
    prefix, suffix = rendered.split(_SENTINEL)
    return TemplateParts(prefix, suffix)


def read_chat_template(folder: Path) -> str | None:
    """The chat template saved in a tokenizer folder (``chat_template.jinja`` or tokenizer_config.json), if any."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


class PromptTokenizer:
    """A local fast tokenizer plus the encoder's prompt template and length limit.

    Args:
        tokenizer_json: path of a `tokenizer.json` (the fast tokenizer).
        max_length: the encoder's token limit (template and special tokens included).
        template: how the text is wrapped before tokenizing (``TemplateParts("", "")`` for plain encoders).
        name: a short name for messages and the embedding cache.
    """

    def __init__(self, tokenizer_json: str | Path, *, max_length: int, template: TemplateParts, name: str) -> None:
        from tokenizers import Tokenizer

        tokenizer_json = Path(tokenizer_json)
        if not tokenizer_json.is_file():
            raise FileNotFoundError(f"tokenizer file {tokenizer_json} does not exist (expected a fast tokenizer.json)")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self._tokenizer = Tokenizer.from_file(str(tokenizer_json))
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.tokenizer_json = tokenizer_json
        self._specials: tuple[str, ...] | None = None
        self.max_length = max_length
        self.template = template
        self.name = name

    @classmethod
    def from_folder(
        cls, folder: str | Path, *, chat: bool | None = None, max_length: int | None = None, name: str | None = None
    ) -> PromptTokenizer:
        """Read a tokenizer folder: a Z-Image hub root (uses ``tokenizer/``) or a folder with ``tokenizer.json``.

        Args:
            folder: the hub root or the tokenizer folder.
            chat: wrap the text with the folder's chat template (default: True when the folder has one).
            max_length: token limit; default 512 for chat (Z-Image), else the folder's ``model_max_length``
                capped by the model config's ``max_position_embeddings``.
            name: name for messages; default the folder name.
        """
        folder = Path(folder)
        if (folder / "tokenizer" / "tokenizer.json").is_file():
            folder = folder / "tokenizer"
        template_text = read_chat_template(folder)
        use_chat = template_text is not None if chat is None else chat
        if use_chat and template_text is None:
            raise ValueError(f"{folder} has no chat template (chat_template.jinja or tokenizer_config.json)")
        parts = chat_template_parts(template_text) if use_chat and template_text is not None else TemplateParts("", "")
        if max_length is None:
            max_length = ZIMAGE_MAX_LENGTH if use_chat else _plain_max_length(folder)
        return cls(folder / "tokenizer.json", max_length=max_length, template=parts, name=name or folder.name)

    # ---- ConditioningTokenizer protocol -------------------------------------------------------------------------

    def format_with_span(self, text: str) -> tuple[str, int, int]:
        """The exact string the encoder tokenizes, and where `text` lies in it.

        Raises:
            ValueError: `text` holds one of the tokenizer's special tokens (e.g. ``<|im_end|>``), which would
                change the prompt's structure instead of being read as report text.
        """
        for special in self.special_tokens:
            if special in text:
                raise ValueError(
                    f"report text contains the special token {special!r} of tokenizer {self.name!r}; "
                    f"it would be read as prompt structure, not text: remove it from the report"
                )
        start = len(self.template.prefix)
        return self.template.prefix + text + self.template.suffix, start, start + len(text)

    def format(self, text: str) -> str:
        """The exact string the encoder tokenizes for `text`."""
        return self.format_with_span(text)[0]

    def content_offsets(self, formatted: str) -> list[tuple[int, int]]:
        """Character span of each token of `formatted`, before truncation, without post-processor specials."""
        return [(a, b) for a, b in self._tokenizer.encode(formatted, add_special_tokens=False).offsets]

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The tokenizer's special tokens (e.g. ``<|im_start|>``, ``[CLS]``)."""
        if self._specials is None:
            decoder = self._tokenizer.get_added_tokens_decoder()
            self._specials = tuple(t.content for t in decoder.values() if t.special)
        return self._specials

    @property
    def num_special_tokens(self) -> int:
        """Tokens the post-processor adds around the content (2 for BERT's [CLS]/[SEP], 0 for Qwen)."""
        return self._tokenizer.num_special_tokens_to_add(is_pair=False)

    # ---- ids -------------------------------------------------------------------------------------------------------

    def token_ids(self, text: str) -> list[int]:
        """The token ids the encoder sees for `text` (formatted, truncated to `max_length`, no padding)."""
        encoding = self._tokenizer.encode(self.format(text), add_special_tokens=True)
        if len(encoding.ids) > self.max_length:
            self._tokenizer.enable_truncation(self.max_length)
            try:
                encoding = self._tokenizer.encode(self.format(text), add_special_tokens=True)
            finally:
                self._tokenizer.no_truncation()
        return list(encoding.ids)

    def fingerprint(self) -> str:
        """SHA-256 of the tokenizer file, template and limit (part of the embedding cache key)."""
        digest = hashlib.sha256(self.tokenizer_json.read_bytes())
        digest.update(json.dumps([self.template.prefix, self.template.suffix, self.max_length]).encode())
        return digest.hexdigest()


def _plain_max_length(folder: Path) -> int:
    limit = 512
    config = folder / "tokenizer_config.json"
    if config.is_file():
        value = json.loads(config.read_text(encoding="utf-8")).get("model_max_length")
        if isinstance(value, int) and 0 < value < 1_000_000:
            limit = value
    model_config = folder / "config.json"
    if model_config.is_file():
        positions = json.loads(model_config.read_text(encoding="utf-8")).get("max_position_embeddings")
        if isinstance(positions, int) and positions > 0:
            limit = min(limit, positions)
    return limit
