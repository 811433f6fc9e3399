"""Text encoders for report conditioning: one interface, `encode(texts) -> list of (L_i, D) tensors`.

`zwsi.text.tokenizer` (no torch) gives the exact string, token count and cut for `reports.conditioning_text`;
`zwsi.text.encoders` (torch) holds Z-Image's Qwen3 encoder and a generic BERT-like encoder;
`zwsi.text.cache` an on-disk feature cache. Import the torch parts from their modules
(`from zwsi.text.encoders import ZImageTextEncoder`) so that importing this package stays light.
"""

from __future__ import annotations

from zwsi.text.tokenizer import ZIMAGE_MAX_LENGTH, ZIMAGE_PROMPT_TEMPLATE, PromptTokenizer

__all__ = ["PromptTokenizer", "ZIMAGE_MAX_LENGTH", "ZIMAGE_PROMPT_TEMPLATE"]
