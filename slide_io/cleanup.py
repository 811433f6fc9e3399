"""Debris of killed writers: partial files (``.<name>.<pid>.partial``) and spool folders (``.zwsi-spool-<pid>-*``).

A writer names its temporary files after its process id. A process killed with SIGKILL (or a machine that lost
power) cannot remove them; the next writer into the same folder calls `remove_stale`, which removes those whose
process is gone — or whose process id now belongs to a process that started after the file was last touched (the
id was reused). Files of live writers are left alone, so two jobs may share a folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SPOOL_PREFIX = ".zwsi-spool-"
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial(?:\.[A-Za-z0-9]+)?$")
_SPOOL = re.compile(rf"^{re.escape(SPOOL_PREFIX)}(?:(?P<pid>\d+)-)?")
LEGACY_SPOOL_AGE_S = 24 * 3600
"""A spool folder without a process id (written before ids were recorded) is stale after a day untouched."""


def partial_path(path: Path, suffix: str = "") -> Path:
    """Where a writer of `path` keeps its unfinished file: ``.<name>.<pid>.partial[suffix]`` beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")


def spool_prefix() -> str:
    """Prefix for this process's spool folders (``tempfile.TemporaryDirectory(prefix=...)``)."""
    return f"{SPOOL_PREFIX}{os.getpid()}-"


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a process from /proc, or None where /proc does not say."""
    boot = _boot_time()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    if boot is None or len(fields) < 20:
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def process_gone(pid: int, touched: float) -> bool:
    """Whether the writer `pid` of a file last modified at `touched` no longer runs."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    except OverflowError:
        return True
    started = _process_start(pid)
    return started is not None and started > touched + 1.0  # the id was reused by a newer process


def remove_stale(folder: Path, name: str | None = None) -> list[Path]:
    """Remove partial files (of output `name`, or of any output when None) and spool folders in `folder` whose
    writer is gone; returns what was removed (each logged)."""
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        try:
            touched = entry.lstat().st_mtime
        except OSError:
            continue
        m = _PARTIAL.match(entry.name)
        if m and entry.is_file() and (name is None or m.group("name") == name):
            if process_gone(int(m.group("pid")), touched):
                entry.unlink(missing_ok=True)
                removed.append(entry)
            continue
        s = _SPOOL.match(entry.name)
        if s and entry.is_dir():
            pid = s.group("pid")
            stale = process_gone(int(pid), touched) if pid else time.time() - touched > LEGACY_SPOOL_AGE_S
            if stale:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    for path in removed:
        logger.warning("removed %s, left by a writer that is gone", path)
    return removed
