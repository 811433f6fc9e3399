"""Machine-readable benchmark rows: one JSON object per line, appended and flushed as each row is measured.

The benchmark scripts beside this file take ``--json PATH``; the GPU kit (`benchmarks/gpu/run.py`) points them all
at one ``results.jsonl`` in ``$OUT``, so a step killed by its timeout still returns every row it had measured.

    log = JsonLines("out/results.jsonl", bench="model_forward")
    log.write(size=1024, mode="fwd", zwsi_ms=98.1)          # {"bench": "model_forward", "size": 1024, ...}
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None, tuples lists, anything else unknown its str()."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


class JsonLines:
    """Appends one record per `write` to ``path`` (no-op when ``path`` is None), flushed to disk at once."""

    def __init__(self, path: str | os.PathLike[str] | None, bench: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.bench = bench
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)

    def write(self, **record: Any) -> None:
        if not self.path:
            return
        line = json.dumps(_clean({"bench": self.bench, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}))
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
