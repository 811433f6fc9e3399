"""Cohorts: K synthetic slides per selected report, resumable as a whole, with a CSV manifest.

    records = reports.load_reports("tcga_reports.csv")
    manifest = generate_cohort(gen, records, "cohort/", per_report=2, where=parse_where(["stated_grade=3"]),
                               request=SlideRequest(width_um=2000, height_um=1500, mpp=0.5, seed=0))

Selection fields (`report_fields`): the record's own metadata columns (``id``, ``patient_id``, ``site``,
``histologic_type``, ``grade``, ``stage``) and what the text states (``reports.extract_fields``' canonical labels,
prefixed ``stated_``: ``stated_histologic_type``, ``stated_grade``, ``stated_stage``, ``stated_margins``).
``--where FIELD=VALUE`` conditions are compared case-insensitively; several values of one field are alternatives,
different fields must all hold.

Slide k of report r is ``<out>/<r>_<k>.tiff`` (``.ome.tif`` in the ome-tiff format): the request (`zwsi.generate.job.SlideRequest`, as `zwsi generate`
takes it) with seed `cohort_seed(request.seed, r, k)`. A rerun skips every slide
whose file already records the same report, seed and model (its provenance), and continues an interrupted slide
from its work folder. ``manifest.csv`` is rewritten atomically after every slide: slide path, report id, k, seed,
the fields, and the report / model / config / provenance hashes.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reports import ReportRecord
    from reports.phi import PhiFinding
    from zwsi.generate.job import SlideRequest
    from zwsi.generate.pipeline import SlideGenerator

RECORD_FIELDS = ("id", "patient_id", "site", "histologic_type", "grade", "stage")
STATED_FIELDS = ("stated_histologic_type", "stated_grade", "stated_stage", "stated_margins")
COHORT_FIELDS = RECORD_FIELDS + STATED_FIELDS
MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS = ("slide_path", "report_id", "k", "seed", *COHORT_FIELDS[1:], "report_sha256", "model_sha256",
                    "config_sha256", "provenance_sha256")


def report_fields(record: ReportRecord) -> dict[str, str]:
    """The selection fields of a report: its metadata and the canonical fields its text states ("" if absent)."""
    from reports import extract_fields

    fields = {name: str(getattr(record, name) or "") for name in RECORD_FIELDS}
    stated = extract_fields(record.text)
    for name in STATED_FIELDS:
        found = stated.get(name.removeprefix("stated_"))
        fields[name] = found.canonical if found is not None else ""
    return fields


def parse_where(items: Iterable[str]) -> dict[str, set[str]]:
    """``["FIELD=VALUE", ...]`` -> ``{field: {values}}`` (values lower-cased).

    Raises:
        ValueError: an item without ``=``, or an unknown field (the valid ones are listed).
    """
    where: dict[str, set[str]] = {}
    for item in items:
        field, sep, value = item.partition("=")
        field = field.strip()
        if not sep or not field:
            raise ValueError(f"--where {item!r}: expected FIELD=VALUE, e.g. stated_histologic_type=adenocarcinoma")
        if field not in COHORT_FIELDS:
            raise ValueError(f"--where {item!r}: unknown field {field!r}; fields: {list(COHORT_FIELDS)}")
        where.setdefault(field, set()).add(value.strip().lower())
    return where


def select_reports(records: Iterable[ReportRecord], where: Mapping[str, set[str]] | None) -> list[ReportRecord]:
    """The records whose fields satisfy every condition of ``where`` (all records when it is empty)."""
    chosen = []
    for record in records:
        fields = report_fields(record)
        if all(fields[name].lower() in values for name, values in (where or {}).items()):
            chosen.append(record)
    return chosen


def cohort_seed(seed: int, report_id: str, k: int) -> int:
    """Seed of slide k of a report: BLAKE2b of (cohort seed, report id, k), 63 bits, the same on every machine."""
    digest = hashlib.blake2b(struct.pack("<qq", seed, k) + report_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def slide_names(report_ids: Sequence[str]) -> dict[str, str]:
    """A file-safe, unique stem per report id (unsafe characters become ``_``; clashes get a short hash)."""
    stems: dict[str, str] = {}
    used: set[str] = set()
    for rid in report_ids:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", rid).strip("._") or "report"
        if stem.lower() in used:
            stem = f"{stem}-{hashlib.sha256(rid.encode()).hexdigest()[:8]}"
        used.add(stem.lower())
        stems[rid] = stem
    return stems


def generate_cohort(
    generator: SlideGenerator,
    records: Sequence[ReportRecord],
    out_dir: str | Path,
    *,
    per_report: int,
    request: SlideRequest,
    where: Mapping[str, set[str]] | None = None,
    progress: bool = True,
) -> Path:
    """Generate ``per_report`` slides for every selected report (resuming), and write ``manifest.csv``.

    Slide k of report r is generated for ``request`` with the seed `cohort_seed(request.seed, r, k)`. Every
    selected report's conditioning text is checked first (PHI policy, see `SlideGenerator.conditioning`),
    so a refused report stops the cohort before any slide is generated.

    Returns:
        The manifest path.

    Raises:
        ValueError: ``per_report`` < 1, no report selected, or a slide file that records another job.
        reports.PhiFoundError: a selected report likely holds PHI under the "refuse" policy (ids named).
    """
    from tqdm.auto import tqdm

    from reports import PhiFoundError
    from slide_io import read_provenance

    if per_report < 1:
        raise ValueError(f"per_report must be >= 1, got {per_report}")
    chosen = select_reports(records, where)
    if not chosen:
        raise ValueError(f"no report matches {_where_text(where)} among {len(records)} reports")
    refused: list[str] = []
    findings: list[PhiFinding] = []
    for record in chosen:
        try:
            generator.conditioning(record)
        except PhiFoundError as exc:
            refused.append(record.id)
            findings.extend(exc.findings)
    if refused:
        raise PhiFoundError(findings, where=f"{len(refused)} selected report(s) ({', '.join(refused[:5])}); nothing "
                                            f"was generated, policy {generator.config.phi_policy!r}:")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = slide_names([r.id for r in chosen])
    rows: list[dict[str, Any]] = []
    main = _is_main()
    jobs = [(record, k) for record in chosen for k in range(per_report)]
    suffix = ".ome.tif" if generator.config.format == "ome-tiff" else ".tiff"
    for record, k in tqdm(jobs, desc="cohort", unit="slide", disable=not (progress and main)):
        slide_seed = cohort_seed(request.seed, record.id, k)
        path = out_dir / f"{stems[record.id]}_{k}{suffix}"
        report_sha = _sha(generator.conditioning(record).text)
        provenance = read_provenance(path) if path.is_file() else None
        if provenance is not None:
            mine = (report_sha, slide_seed, generator.model_sha256)
            found = (provenance.report_sha256, provenance.seed, provenance.model_sha256)
            if found != mine:
                raise ValueError(f"{path} exists from another job (report/seed/model hashes differ); move it away "
                                 f"or choose another --out")
        else:
            provenance = generator.generate_request(record, request.with_seed(slide_seed), path,
                                                    progress=progress).provenance
        fields = report_fields(record)
        rows.append({
            "slide_path": path.name, "report_id": record.id, "k": k, "seed": slide_seed,
            **{name: fields[name] for name in COHORT_FIELDS[1:]},
            "report_sha256": provenance.report_sha256, "model_sha256": provenance.model_sha256,
            "config_sha256": provenance.config_sha256, "provenance_sha256": _sha(provenance.to_json()),
        })
        if main:
            _write_manifest(out_dir / MANIFEST_NAME, rows)
    return out_dir / MANIFEST_NAME


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """The rows of a cohort manifest."""
    with Path(path).open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _write_manifest(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _where_text(where: Mapping[str, set[str]] | None) -> str:
    if not where:
        return "(no condition)"
    return " and ".join(f"{k} in {sorted(v)}" for k, v in where.items())
