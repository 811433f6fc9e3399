"""Killed writers: SIGTERM cleans up like Ctrl-C; after SIGKILL the next write into the folder removes the debris of
the dead process and leaves a live writer's files alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

import slide_io
from slide_io.cleanup import remove_stale

REPO = Path(__file__).resolve().parents[2]

# A writer whose source is slow (50 ms a tile), so the parent can kill it mid-write; it runs under the CLI's error
# path (`zwsi.errors.run_command`), as every zwsi command does.
WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from slide_io import write_pyramid
    from zwsi.errors import run_command

    def slow(x, y, w, h):
        time.sleep(0.05)
        return np.full((h, w, 3), 200, np.uint8)

    def job(out):
        write_pyramid(out, slow, size=(2048, 2048), mpp=0.5, compression="deflate", workers=1)

    sys.exit(run_command("test-writer", job, sys.argv[1]))
""")


def _start_writer(out: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if any(p.name.endswith(".partial") for p in out.parent.iterdir()):
            time.sleep(0.3)
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"writer ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the writer never started its partial file")


def test_sigterm_removes_the_partial_file_and_spool_folder(tmp_path):
    out = tmp_path / "slide.tiff"
    proc = _start_writer(out)
    assert any(p.name.startswith(".zwsi-spool-") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "terminated; partial outputs were removed" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_after_sigkill_the_next_write_removes_the_dead_writers_debris(tmp_path):
    out = tmp_path / "slide.tiff"
    proc = _start_writer(out)
    proc.kill()
    proc.wait(timeout=30)
    debris = sorted(p.name for p in tmp_path.iterdir())
    assert any(n.startswith(f".slide.tiff.{proc.pid}.partial") for n in debris)
    assert any(n.startswith(f".zwsi-spool-{proc.pid}-") for n in debris)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".slide.tiff.{live.pid}.partial").write_bytes(b"a live writer's file")
        (tmp_path / f".other.tiff.{proc.pid}.partial").write_bytes(b"another output's file")
        slide_io.write_pyramid(out, lambda x, y, w, h: np.zeros((h, w, 3), np.uint8), size=(300, 200), mpp=1.0)
        left = sorted(p.name for p in tmp_path.iterdir())
        assert left == [f".other.tiff.{proc.pid}.partial", f".slide.tiff.{live.pid}.partial", "slide.tiff"]
        assert remove_stale(tmp_path) == [tmp_path / f".other.tiff.{proc.pid}.partial"]  # any output's, when asked
    finally:
        live.kill()
        live.wait()
