"""Read report records from plain text, JSON, JSON Lines and CSV/TSV files (such as the TCGA report corpus).

Column or key names are matched case-insensitively against a short list of aliases per field
(`FIELD_ALIASES`); the caller can name the text and id columns explicitly. Every other column is kept in
`ReportRecord.metadata`. Nothing in the text is changed.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from reports.records import ReportRecord

TEXT_SUFFIXES = (".txt", ".text")
JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv", ".tsv")

# Accepted column/key names per record field, in order of preference (compared case-insensitively).
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "text": ("text", "report", "report_text", "pathology_report", "note", "content"),
    "id": ("id", "report_id", "case_id", "accession_id", "bcr_patient_barcode", "patient_id", "patient_filename"),
    "patient_id": ("patient_id", "bcr_patient_barcode", "patient", "subject_id", "case_submitter_id"),
    "site": ("site", "organ", "primary_site", "tissue", "anatomic_site"),
    "histologic_type": ("histologic_type", "histological_type", "histology", "subtype", "type_name", "cancer_type"),
    "grade": ("grade", "histologic_grade", "tumor_grade"),
    "stage": ("stage", "ajcc_pathologic_stage", "pathologic_stage", "stage_overall"),
}

# TCGA project code -> organ, used when a table has `type_code` but no site column.
TCGA_SITES: dict[str, str] = {
    "ACC": "adrenal gland", "BLCA": "bladder", "BRCA": "breast", "CESC": "cervix", "CHOL": "bile duct",
    "COAD": "colon", "DLBC": "lymph node", "ESCA": "esophagus", "GBM": "brain", "HNSC": "head and neck",
    "KICH": "kidney", "KIRC": "kidney", "KIRP": "kidney", "LAML": "bone marrow", "LGG": "brain", "LIHC": "liver",
    "LUAD": "lung", "LUSC": "lung", "MESO": "pleura", "OV": "ovary", "PAAD": "pancreas",
    "PCPG": "adrenal gland", "PRAD": "prostate", "READ": "rectum", "SARC": "soft tissue", "SKCM": "skin",
    "STAD": "stomach", "TGCT": "testis", "THCA": "thyroid", "THYM": "thymus", "UCEC": "uterus",
    "UCS": "uterus", "UVM": "eye",
}


def load_reports(
    path: str | Path,
    *,
    text_key: str | None = None,
    id_key: str | None = None,
    encoding: str = "utf-8",
) -> list[ReportRecord]:
    """Read every report in a file or a folder of text files.

    Args:
        path: a ``.txt`` file (one report), a folder of ``.txt`` files (one report each, sorted by name),
            a ``.json`` file (one object, a list of objects, or ``{"reports": [...]}``), a ``.jsonl`` file
            (one object per line) or a ``.csv``/``.tsv`` table (one report per row).
        text_key: the column/key holding the text; default: the first of `FIELD_ALIASES["text"]` present.
        id_key: the column/key holding the id; default: the first of `FIELD_ALIASES["id"]` present,
            else ``"<file name>:row N"`` / ``"<file name>:item N"``.
        encoding: text encoding of the file(s).

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: an unknown suffix, a missing text column (the message lists the columns found), an
            empty text, a duplicate id, or malformed JSON (with the line number).
    """
    return list(iter_reports(path, text_key=text_key, id_key=id_key, encoding=encoding))


def iter_reports(
    path: str | Path,
    *,
    text_key: str | None = None,
    id_key: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[ReportRecord]:
    """Like `load_reports`, one record at a time (ids are still checked for duplicates)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"report file or folder {path} does not exist")
    seen: dict[str, str] = {}
    records = _iter_any(path, text_key, id_key, encoding)
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except UnicodeDecodeError as exc:  # name the file and the byte, not only the codec
            raise ValueError(f"{_decoding_file(path, exc)}: not {encoding} text (byte 0x{exc.object[exc.start]:02x} "
                             f"at offset {exc.start}); save it as {encoding}") from exc
        if record.id in seen:
            raise ValueError(
                f"duplicate report id {record.id!r}: {seen[record.id]} and {record.source}; "
                f"choose a unique id column (CLI: --report-id/--id picks one report; Python: id_key=)"
            )
        seen[record.id] = record.source
        yield record


def load_report(
    path: str | Path,
    *,
    row: int | None = None,
    report_id: str | None = None,
    text_key: str | None = None,
    id_key: str | None = None,
    encoding: str = "utf-8",
) -> ReportRecord:
    """Read one report: the only one in the file, row/item `row` (0-based, header excluded), or the one with `report_id`.

    Raises:
        ValueError: both `row` and `report_id` given, the file holds several reports and neither was given,
            or the row/id does not exist (the message says how many rows there are).
    """
    if row is not None and report_id is not None:
        raise ValueError("give either row or report_id, not both")
    records = load_reports(path, text_key=text_key, id_key=id_key, encoding=encoding)
    if report_id is not None:
        for record in records:
            if record.id == report_id or record.patient_id == report_id:
                return record
        raise ValueError(f"no report with id {report_id!r} in {path} ({len(records)} reports)")
    if row is not None:
        if not 0 <= row < len(records):
            raise ValueError(f"row {row} is out of range: {path} holds {len(records)} reports (rows 0..{len(records) - 1})")
        return records[row]
    if len(records) != 1:
        raise ValueError(f"{path} holds {len(records)} reports; choose one with row= or report_id=")
    return records[0]


def record_from_mapping(
    item: Mapping[str, Any],
    *,
    source: str,
    default_id: str,
    text_key: str | None = None,
    id_key: str | None = None,
) -> ReportRecord:
    """Build a record from one CSV row or JSON object, mapping columns through `FIELD_ALIASES`."""
    by_lower = {str(k).lower(): k for k in item}

    def pick(name: str, explicit: str | None = None) -> str | None:
        if explicit is not None:
            if explicit.lower() not in by_lower:
                raise ValueError(f"{source}: no column/key {explicit!r}; found {sorted(map(str, item))}")
            return by_lower[explicit.lower()]
        for alias in FIELD_ALIASES[name]:
            if alias in by_lower:
                return by_lower[alias]
        return None

    text_col = pick("text", text_key)
    if text_col is None:
        raise ValueError(
            f"{source}: no report text column; expected one of {list(FIELD_ALIASES['text'])} "
            f"(or name it: CLI --text-key, Python text_key=), found {sorted(map(str, item))}"
        )
    text = item[text_col]
    if not isinstance(text, str):
        raise ValueError(f"{source}: text column {text_col!r} holds {type(text).__name__}, expected a string")
    used = {text_col}
    values: dict[str, str | None] = {}
    for name in ("id", "patient_id", "site", "histologic_type", "grade", "stage"):
        col = pick(name, id_key if name == "id" else None)
        value = _as_text(item[col]) if col is not None else None
        values[name] = value
        if col is not None:
            used.add(col)
    metadata = {str(k): _as_text(v) or "" for k, v in item.items() if k not in used}
    if values["site"] is None and "type_code" in by_lower:
        values["site"] = TCGA_SITES.get(str(item[by_lower["type_code"]]).strip().upper())
    return ReportRecord(
        id=values["id"] or default_id,
        text=text,
        patient_id=values["patient_id"],
        site=values["site"],
        histologic_type=values["histologic_type"],
        grade=values["grade"],
        stage=values["stage"],
        source=source,
        metadata=metadata,
    )


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    text = str(value).strip()
    return text or None


def _iter_any(path: Path, text_key: str | None, id_key: str | None, encoding: str) -> Iterator[ReportRecord]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"folder {path} holds no {'/'.join(TEXT_SUFFIXES)} report files")
        for file in files:
            yield _read_text_file(file, encoding)
        return
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        yield _read_text_file(path, encoding)
    elif suffix in CSV_SUFFIXES:
        yield from _iter_csv(path, text_key, id_key, encoding, delimiter="\t" if suffix == ".tsv" else ",")
    elif suffix in JSONL_SUFFIXES:
        yield from _iter_jsonl(path, text_key, id_key, encoding)
    elif suffix in JSON_SUFFIXES:
        yield from _iter_json(path, text_key, id_key, encoding)
    else:
        known = TEXT_SUFFIXES + CSV_SUFFIXES + JSON_SUFFIXES + JSONL_SUFFIXES
        raise ValueError(f"unknown report file type {suffix!r} for {path}; expected one of {list(known)} or a folder")


def _read_text_file(path: Path, encoding: str) -> ReportRecord:
    return ReportRecord(id=path.stem, text=path.read_text(encoding=encoding), source=str(path))


def _iter_csv(
    path: Path, text_key: str | None, id_key: str | None, encoding: str, delimiter: str
) -> Iterator[ReportRecord]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # real reports exceed the 128 kB default
    with path.open(newline="", encoding=encoding) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise ValueError(f"{path} has no header row")
        for i, row in enumerate(reader):
            if None in row:
                raise ValueError(f"{path.name}:row {i}: more fields than the {len(reader.fieldnames)} header columns")
            yield record_from_mapping(
                row, source=f"{path.name}:row {i}", default_id=f"{path.name}:row {i}", text_key=text_key, id_key=id_key
            )


def _iter_jsonl(path: Path, text_key: str | None, id_key: str | None, encoding: str) -> Iterator[ReportRecord]:
    with path.open(encoding=encoding) as handle:
        item_no = 0
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from exc
            yield _record_from_json_item(item, path, item_no, text_key, id_key)
            item_no += 1


def _iter_json(path: Path, text_key: str | None, id_key: str | None, encoding: str) -> Iterator[ReportRecord]:
    try:
        data = json.loads(path.read_text(encoding=encoding))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from exc
    if isinstance(data, dict) and isinstance(data.get("reports"), list):
        data = data["reports"]
    items: Sequence[Any] = data if isinstance(data, list) else [data]
    for i, item in enumerate(items):
        yield _record_from_json_item(item, path, i, text_key, id_key)


def _record_from_json_item(item: Any, path: Path, i: int, text_key: str | None, id_key: str | None) -> ReportRecord:
    if isinstance(item, str):
        return ReportRecord(id=f"{path.name}:item {i}", text=item, source=f"{path.name}:item {i}")
    if not isinstance(item, Mapping):
        raise ValueError(f"{path.name}:item {i} is {type(item).__name__}; expected an object with a text key or a string")
    return record_from_mapping(
        item, source=f"{path.name}:item {i}", default_id=f"{path.name}:item {i}", text_key=text_key, id_key=id_key
    )


def _decoding_file(path: Path, exc: UnicodeDecodeError) -> Path:
    """The file a decoding error came from: `path` itself, or in a folder the report file that fails to decode."""
    if not path.is_dir():
        return path
    for file in sorted(p for p in path.iterdir() if p.suffix.lower() in TEXT_SUFFIXES):
        try:
            file.read_bytes().decode(exc.encoding)
        except UnicodeDecodeError:
            return file
    return path
