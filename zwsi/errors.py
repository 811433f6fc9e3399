"""One error path for every `zwsi` command: a user error is one line on stderr and exit code 2; a bug is a traceback.

User errors are what a user can fix: a bad path or value (`ValueError`, `FileNotFoundError`, `FileExistsError`),
an unreadable or unsupported slide (`slide_io.SlideError`), report text refused by the PHI policy, a YAML syntax
error or tag, and the filesystem saying no — a full disk (ENOSPC), a read-only or forbidden target (EROFS,
EACCES, EPERM), a path under a file (ENOTDIR), a missing folder (ENOENT), a quota — or too little memory for the
job. Anything else (KeyError, TypeError, AssertionError, ...) is a bug and keeps its traceback.

SIGTERM is turned into `Terminated` (a KeyboardInterrupt), so the cleanups that run on Ctrl-C — partial files and
spool folders removed, stores left resumable — also run when a job is killed politely; the exit code is 143.
"""

from __future__ import annotations

import errno
import signal
import sys
from types import FrameType
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143

_OS_ERRORS: dict[int, str] = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the filesystem is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a component of the path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
    errno.EEXIST: "it already exists",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EFBIG: "the file is too large for this filesystem",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error from the device",
}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised in the main thread so that cleanups run as on Ctrl-C)."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"terminated by signal {signum}")


def install_sigterm_handler() -> None:
    """Turn SIGTERM into `Terminated` in this (main) thread; a no-op where signals cannot be set."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread, or a platform without SIGTERM
        pass


def describe_user_error(exc: BaseException) -> str | None:
    """One line naming what went wrong and the value at fault, or None when `exc` is a bug (keep its traceback)."""
    from reports.phi import PhiFoundError
    from slide_io.errors import SlideError

    if isinstance(exc, (SlideError, PhiFoundError)):
        return f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError) and exc.errno in _OS_ERRORS:
        where = exc.filename if exc.filename is not None else None
        what = _OS_ERRORS[exc.errno]
        if where is None:
            return f"{what} ({exc.strerror or exc})"
        extra = f" -> {exc.filename2}" if getattr(exc, "filename2", None) else ""
        return f"{where}{extra}: {what}"
    if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"a file is not {exc.encoding} text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return (f"not enough memory for this job ({exc or 'allocation failed'}); ask for a smaller size, fewer "
                f"windows per call (--batch-size) or a machine with more memory")
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return None
    if isinstance(exc, yaml.YAMLError):
        return f"not valid YAML: {' '.join(str(exc).split())}"
    return None


def run_command(command: str, func: Any, args: Any) -> int:
    """Run a subcommand handler with the one error path; returns the exit code."""
    install_sigterm_handler()
    try:
        return int(func(args) or 0)
    except Terminated:
        print(f"zwsi {command}: terminated; partial outputs were removed, run the same command again to resume",
              file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print(f"zwsi {command}: interrupted; partial outputs were removed, run the same command again to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        line = describe_user_error(exc)
        if line is None:
            raise
        line = " ".join(line.split())  # one line, even for messages that carry a parser's multi-line context
        print(f"zwsi {command}: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
