"""Several processes on one slide: who am I, wait for the others, and take turns writing the shared store.

``accelerate launch --config_file configs/accelerate/ddp-multi-gpu.yaml -m zwsi generate ...`` starts one process
per GPU with ``RANK``/``WORLD_SIZE`` in the environment (on CPU-only machines: ``torchrun --nproc_per_node N -m
zwsi generate ... --device cpu``, as accelerate's CPU launcher needs mpirun); `process_group()` joins them through
accelerate's ``PartialState`` (NCCL on GPUs, gloo on CPUs). Each phase's windows are split with
``planner.phase_batches(rank, world)``, every process writes its windows into the same store on a shared file
system, and a barrier closes each phase. zarr shards are rewritten whole, so two processes writing windows of one
shard at the same time would lose one of them: writes take an exclusive `fcntl.flock` on a lock file beside the
store (`StoreLock`), reads need none (a phase only reads windows of earlier phases, finished before the barrier;
zarr replaces files atomically).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place among the processes generating one slide.

    Attributes:
        rank: index of this process (0 writes the TIFF).
        world_size: number of processes.
        device: the accelerator this process should use ("cpu", "cuda:0", ...).
        barrier: blocks until every process has called it.
    """

    rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    barrier: Callable[[], None] = field(default=lambda: None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_group(device: str | None = None) -> ProcessGroup:
    """The process group from the launcher's environment: one process unless ``WORLD_SIZE`` > 1.

    Args:
        device: force a device ("cpu" keeps a multi-process run on CPUs with gloo); None: accelerate's choice
            (this process's GPU, else the CPU).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ProcessGroup(device=device or _default_device())
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    if state.num_processes != world:  # e.g. a state made single-process earlier in this (forked) process
        raise RuntimeError(f"WORLD_SIZE={world} in the environment but accelerate's process state has "
                           f"{state.num_processes} process(es): every process would write the same work store")
    return ProcessGroup(
        rank=state.process_index,
        world_size=state.num_processes,
        device=device or str(state.device),
        barrier=state.wait_for_everyone,
    )


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class StoreLock:
    """An exclusive advisory lock (``fcntl.flock``) on ``path``, re-entrant within a process; a no-op when unused.

    Works across processes on one machine and on shared file systems that support ``flock`` (NFSv4, Lustre).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
