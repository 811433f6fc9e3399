"""Normalisation that adds nothing: exact outputs, every edit recorded and replayable, no new words."""

from __future__ import annotations

import pytest

from reports.normalize import Edit, added_words, normalize


def _replay(source: str, edits: tuple[Edit, ...]) -> str:
    out, last = [], 0
    for e in edits:
        assert source[e.start:e.end] == e.original
        out += [source[last:e.start], e.replacement]
        last = e.end
    return "".join(out + [source[last:]])


def test_known_artefacts_are_fixed_exactly():
    source = ("  FINAL\u00a0DIAGNOSIS: \u201cLeft breast\u201d \u2013 infiltrating duc-\ntal carci\u00adnoma,\tgrade 2"
              "  of 3.  \r\n\n\n\nMicroscopic: the presence. of malignancy in tan-. brown tissue (WHO. scale), e.g. "
              "the margin.\u200b  ")
    result = normalize(source)
    assert result.text == ('FINAL DIAGNOSIS: "Left breast" - infiltrating duc-tal carcinoma, grade 2 of 3.\n\n'
                           "Microscopic: the presence of malignancy in tan-brown tissue (WHO scale), e.g. the margin.")
    assert result.summary() == {"whitespace": 6, "unicode": 4, "line-break hyphen": 2, "invisible": 2,
                                "line-break mark": 2}
    assert _replay(source, result.edits) == result.text
    assert added_words(source, result.text) == []


def test_line_break_marks_can_be_kept():
    text = "The findings are diagnostic. of a glioblastoma."
    assert normalize(text).text == "The findings are diagnostic of a glioblastoma."
    assert normalize(text, line_break_marks=False).text == text
    # abbreviations, numbers and capitalised sentence starts are not line-break marks
    for kept in ("see e.g. the slide", "measuring 2.5. cm", "Dr. The frozen section", "No. 5 block"):
        assert normalize(kept).text == kept


def test_added_words_catches_a_new_word():
    assert added_words("margins are negative", "margins are positive") == ["positive"]
    assert added_words("grade 2 of 3", "grade of 3") == []
    assert added_words("a b", "b a") == ["a"]  # order matters


def test_normalize_is_idempotent_and_rejects_non_text():
    once = normalize("A  b.  \n\n\n c-\nd").text
    assert normalize(once).text == once
    with pytest.raises(TypeError, match="expects a str, got bytes"):
        normalize(b"text")  # type: ignore[arg-type]
