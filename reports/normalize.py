"""Normalisation that adds nothing: Unicode, control-character and whitespace cleanup, and line-break artefacts.

Every change is an `Edit` on a span of the source, so the user can see exactly what changed. The rules only
delete characters or replace a character by its plain equivalent (a curly quote by a straight one, a no-break
space by a space), so the result never holds a word the source lacks; `added_words` checks that after every
call, and `normalize` raises if it ever fails.

Line-break artefacts: a hyphen at a line break is kept and the break removed ("carci-⏎noma" → "carci-noma",
"tan-⏎brown" → "tan-brown"): deciding whether a hyphen is soft would need a dictionary, and dropping it could
form a word the report does not contain. OCR'd corpora such as TCGA-Reports render each line break as ". ";
with ``line_break_marks=True`` (default) such a mark inside a sentence (after a word of two or more letters,
before a lower-case word) is removed: "presence. of malignancy" → "presence of malignancy".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

# Plain equivalents for look-alike characters (nothing else is mapped; µ, ², ° and accents are kept).
_CHAR_MAP: dict[str, str] = {
    "\u00a0": " ", "\u1680": " ", "\u2000": " ", "\u2001": " ", "\u2002": " ", "\u2003": " ", "\u2004": " ",
    "\u2005": " ", "\u2006": " ", "\u2007": " ", "\u2008": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ",
    "\u205f": " ", "\u3000": " ",
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...",
    "\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
    "\u2028": "\n", "\u2029": "\n\n",
}
_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"  # soft hyphen, zero-width characters, BOM

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Edit:
    """One change: `source[start:end]` (== `original`) became `replacement`.

    Attributes:
        start: start offset in the source text.
        end: end offset (exclusive) in the source text.
        original: the source characters.
        replacement: what replaced them ("" for a deletion).
        kind: ``"unicode"``, ``"invisible"``, ``"control"``, ``"whitespace"``, ``"line-break hyphen"`` or
            ``"line-break mark"``.
    """

    start: int
    end: int
    original: str
    replacement: str
    kind: str

    def to_dict(self) -> dict[str, object]:
        return {"start": self.start, "end": self.end, "original": self.original, "replacement": self.replacement,
                "kind": self.kind}


@dataclass(frozen=True)
class NormalizedText:
    """The result of `normalize`: the cleaned text and every edit, in source order."""

    source: str
    text: str
    edits: tuple[Edit, ...]

    def summary(self) -> dict[str, int]:
        """Number of edits per kind."""
        counts: dict[str, int] = {}
        for edit in self.edits:
            counts[edit.kind] = counts.get(edit.kind, 0) + 1
        return counts


def words(text: str) -> list[str]:
    """The words of `text` for the adds-nothing check: runs of letters/digits after NFKC, casefolded, invisibles removed."""
    if text.isascii():
        return _WORD.findall(text.lower())
    canonical = unicodedata.normalize("NFKC", text)
    canonical = "".join(ch for ch in canonical if unicodedata.category(ch) != "Cf")
    return _WORD.findall(canonical.casefold())


def added_words(source: str, result: str) -> list[str]:
    """Words of `result` that are not matched, in order, by words of `source` (empty when result ⊑ source).

    `result`'s words must be a subsequence of `source`'s words: the same words, in the same order, some possibly
    dropped. The first unmatched word and everything after it is returned.
    """
    src = iter(words(source))
    out = words(result)
    for i, word in enumerate(out):
        if not any(word == candidate for candidate in src):
            return out[i:]
    return []


# ---- rules ---------------------------------------------------------------------------------------------------

def _rule_unicode(m: re.Match[str]) -> tuple[str, str]:
    text = m.group()
    if text[0] in _CHAR_MAP:
        return _CHAR_MAP[text[0]], "unicode"
    return unicodedata.normalize("NFC", text), "unicode"  # base letter + combining marks


def _rule_control(m: re.Match[str]) -> tuple[str, str]:
    text = m.group()
    if text in ("\r\n", "\r"):
        return "\n", "whitespace"
    if text == "\t":
        return " ", "whitespace"
    return "", "control"


_LINE_BREAK_MARK = re.compile(r"(?<![\w.])[A-Za-z][a-z]+\Z|(?<![\w.])[A-Z]{2,}\Z")


def _is_line_break_mark(text: str, start: int) -> bool:
    """True when the ". " at `start` follows a plain word of >= 2 letters (not an abbreviation like e.g.)."""
    return bool(_LINE_BREAK_MARK.search(text, max(0, start - 40), start))


_RULES: list[tuple[str, str, Callable[[re.Match[str]], tuple[str, str]] | str | None]] = [
    # (name, pattern, replacement: a function -> (replacement, kind), a fixed string, or None: decided in normalize)
    ("invisible", f"[{_INVISIBLE}]+", ""),
    ("unicode", "[" + "".join(_CHAR_MAP) + "]|\\w[\u0300-\u036f]+", _rule_unicode),
    ("line-break hyphen", r"(?<=\w)-[ \t]*(?:\r\n|\r|\n)[ \t]*(?=\w)|(?<=[a-z])-\. (?=[a-z])", "-"),
    ("line-break mark", r"\.(?= [a-z])", None),
    ("whitespace", r"\A\s+|\s+\Z|[ \t]+(?=\r?\n)|(?:\r\n|\r|\n){3,}|[ \t]*\t[ \t]*| {2,}", None),
    ("control", r"\r\n|[\r\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", _rule_control),
]
_COMBINED = re.compile("|".join(f"(?P<r{i}>{pattern})" for i, (_, pattern, _) in enumerate(_RULES)))


def normalize(text: str, *, line_break_marks: bool = True) -> NormalizedText:
    """Clean `text` without adding anything, recording every change.

    Args:
        text: the report text, verbatim.
        line_break_marks: remove ". " line-break marks inside sentences (OCR'd corpora such as TCGA-Reports).

    Returns:
        The cleaned text with the list of edits (spans in `text`).

    Raises:
        TypeError: `text` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize expects a str, got {type(text).__name__}")
    edits: list[Edit] = []
    pieces: list[str] = []
    last = 0
    for m in _COMBINED.finditer(text):
        index = int(m.lastgroup[1:])  # type: ignore[index]
        name, _, repl = _RULES[index]
        original = m.group()
        kind = name
        start, end = m.start(), m.end()
        if name == "line-break mark":
            if not line_break_marks or not _is_line_break_mark(text, start):
                continue
            end, original, replacement = start + 1, ".", ""  # only the period goes
        elif name == "whitespace":
            if start == 0 or end == len(text):
                replacement = ""  # leading/trailing whitespace of the report
            elif original[0] in "\r\n":
                replacement = "\n\n"  # at most one blank line
            elif text[end] in "\r\n":
                replacement = ""  # trailing spaces on a line
            else:
                replacement = " "
        elif callable(repl):
            replacement, kind = repl(m)
        else:
            replacement = repl or ""
        if replacement == original:
            continue
        pieces.append(text[last:start])
        pieces.append(replacement)
        last = end
        edits.append(Edit(start, end, original, replacement, kind))
    pieces.append(text[last:])
    result = "".join(pieces)
    extra = added_words(text, result)
    if extra:  # a bug in the rules above, never the user's fault
        raise RuntimeError(f"normalisation would add words not in the source: {extra[:5]}")
    return NormalizedText(source=text, text=result, edits=tuple(edits))
