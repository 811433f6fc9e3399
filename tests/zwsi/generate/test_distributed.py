"""Several processes on one slide: the process group from the launcher's environment (a real 2-process gloo group
whose barrier waits for the slower process), and the store lock that keeps two processes from writing at once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from zwsi.generate.distributed import ProcessGroup, StoreLock, process_group

GROUP_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from zwsi.generate.distributed import process_group
    group = process_group("cpu")
    if group.rank == 1:
        time.sleep(1.5)  # the barrier must hold rank 0 until rank 1 arrives
    entered = time.monotonic()
    group.barrier()
    waited = time.monotonic() - entered
    print(json.dumps({"rank": group.rank, "world": group.world_size, "device": group.device,
                      "main": group.is_main, "waited": waited}))
""")

LOCK_SCRIPT = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
    sys.exit(0)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_process_without_a_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    group = process_group("cpu")
    assert (group.rank, group.world_size, group.device, group.is_main) == (0, 1, "cpu", True)
    group.barrier()  # a no-op, returns at once
    assert process_group().device in ("cpu", "cuda")
    assert ProcessGroup(rank=1, world_size=2).is_main is False


def test_two_gloo_processes_form_a_group_whose_barrier_waits(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", GROUP_SCRIPT], cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
             for r in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    seen = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outs), key=lambda d: d["rank"])
    assert [(d["rank"], d["world"], d["device"], d["main"]) for d in seen] == [(0, 2, "cpu", True),
                                                                              (1, 2, "cpu", False)]
    assert seen[0]["waited"] > 1.0 > seen[1]["waited"]


def test_the_store_lock_excludes_other_processes_and_nests_within_one(tmp_path: Path) -> None:
    path = tmp_path / "work" / "store.lock"  # its folder is created on first use
    lock = StoreLock(path)

    def other_can_lock() -> bool:
        code = subprocess.run([sys.executable, "-c", LOCK_SCRIPT, str(path)], timeout=60).returncode
        assert code in (0, 3)
        return code == 0

    with lock():
        assert path.is_file() and not other_can_lock()
        with lock():  # re-entrant: the same process takes it again without deadlock
            assert not other_can_lock()
        assert not other_can_lock()  # still held by the outer block
    assert other_can_lock()
    start = time.monotonic()
    with lock():
        pass
    assert time.monotonic() - start < 5


def test_a_single_process_state_under_a_multi_process_launcher_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A forked process that inherited a one-process accelerate state would write the shared store unsynchronised."""
    from accelerate import PartialState

    PartialState._reset_state()
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    PartialState(cpu=True)  # made single-process, as a training test in the same interpreter does
    monkeypatch.setenv("WORLD_SIZE", "2")
    try:
        with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2 in the environment but accelerate's process state has "
                                               r"1 process\(es\)"):
            process_group("cpu")
    finally:
        PartialState._reset_state()
