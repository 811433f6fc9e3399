"""The FSDP config (configs/accelerate/fsdp-multi-gpu.yaml: FSDP2, S3DiTBlock units) exercised on the CPU: two gloo
processes train the tiny S3-DiT with the trainer's objective; the losses equal a single process on the same global
batch, the gathered full weights equal its weights, and a sharded checkpoint (one file per rank) resumes exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tests.conftest import REPO_ROOT
from tests.zwsi import fsdp_worker


def test_fsdp_on_two_gloo_processes_equals_one_process_and_its_sharded_checkpoint_resumes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = fsdp_worker.build()
    opt = fsdp_worker.optimizer_of(model)
    single = fsdp_worker.train(model, opt, range(fsdp_worker.STEPS))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "tests.zwsi.fsdp_worker", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "losses.json").read_text())
    print("1 process:", single, "\n2 FSDP processes:", got["losses"], "\nresumed at step 3:", got["resumed"])
    n_blocks = len(model.layers) + len(model.noise_refiner) + len(model.context_refiner)
    assert got["world"] == 2 and got["sharded"] and got["units"] == n_blocks + 1  # every S3DiTBlock + the root
    np.testing.assert_allclose(got["losses"], single, rtol=1e-5)
    assert single[-1] < single[0]  # it trains
    # the sharded checkpoint: one data file per rank plus metadata; resuming from it repeats steps 4-6 exactly
    shards = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert shards == ["__0_0.distcp", "__1_0.distcp", ".metadata"] or sorted(shards) == sorted(
        [".metadata", "__0_0.distcp", "__1_0.distcp"]), shards
    np.testing.assert_allclose(got["resumed"], got["losses"][fsdp_worker.SAVE_AT:], rtol=1e-6, atol=0)
    from safetensors.torch import load_file

    # the full state dict gathered from the shards (as the trainer's checkpoints gather it) is the single process's
    # model: per tensor, its distance from the single-process weights is tiny next to what training moved them
    # (AdamW turns last-bit differences of near-zero gradients into steps of lr, so an elementwise bound would not do)
    full = load_file(tmp_path / "final.safetensors")
    ref, init = model.state_dict(), fsdp_worker.build().state_dict()
    assert full.keys() == ref.keys()
    worst = max(float((full[k] - ref[k]).norm() / (ref[k] - init[k]).norm()) for k in ref if (ref[k] - init[k]).norm() > 0)
    print(f"gathered FSDP weights vs one process: worst |diff| / |training change| = {worst:.1e}")
    assert worst < 1e-2
