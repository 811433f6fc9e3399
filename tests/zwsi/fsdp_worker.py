"""FSDP2 training of the tiny S3-DiT on CPU processes (gloo), sharded as configs/accelerate/fsdp-multi-gpu.yaml says.

Launched by tests/zwsi/test_train_fsdp.py as

    python -m torch.distributed.run --nproc_per_node 2 -m tests.zwsi.fsdp_worker --out DIR

Accelerate enables FSDP only on accelerator devices (on CPU it falls back to DDP), so this applies the config's
FSDP2 settings itself, as accelerate's `fsdp2_prepare_model` does: `fully_shard` on every module of the config's
`fsdp_transformer_layer_cls_to_wrap` class, then on the root, `reshard_after_forward` from the config. It trains
`STEPS` steps of the trainer's objective (`zwsi.flow.flow_loss` over `sequence_denoiser`) on a fixed global batch,
saves a sharded checkpoint (torch.distributed.checkpoint: one file per rank) after `SAVE_AT` steps, then builds a
fresh sharded model, resumes from that checkpoint and trains the remaining steps again. Rank 0 writes the losses of
both runs and the full state dict gathered as the trainer gathers it (`get_model_state_dict(full_state_dict=True)`).

The single-process baseline is `train` below without a process group: same model, data, objective and optimizer.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import yaml

from tests.conftest import REPO_ROOT
from tests.zwsi.model.model_testing import random_model
from zwsi.model import ImageSegment, SequenceSample, grid_positions, report_token_count

FSDP_CONFIG = REPO_ROOT / "configs" / "accelerate" / "fsdp-multi-gpu.yaml"
GLOBAL_BATCH = 4
STEPS = 6
SAVE_AT = 3


def window(index: int, step: int) -> tuple[SequenceSample, torch.Tensor, torch.Tensor, float]:
    """Sample `index` of step `step`: a window with a neighbour strip and an overview (sizes vary with the index),
    its clean latents, its noise and its noise level; the same on every process."""
    gen = torch.Generator().manual_seed(1000 * step + index)
    n_report = (7, 40, 0, 19)[index % 4]
    h = 10 + 2 * (index % 2)
    lp = report_token_count(n_report)
    x0 = torch.randn(16, 1, h, 10, generator=gen)
    eps = torch.randn(16, 1, h, 10, generator=gen)
    contexts = [ImageSegment(torch.randn(16, 1, h, 4, generator=gen), grid_positions(lp + 1, h // 2, 2, w0=-2.0)),
                ImageSegment(torch.randn(16, 1, 6, 6, generator=gen),
                             grid_positions(lp + 2, 3, 3, h0=-1.5, w0=-1.5, step=4.0))][: 1 + index % 2]
    sample = SequenceSample(ImageSegment(x0.clone(), grid_positions(lp + 1, h // 2, 5)), 0.0,
                            torch.randn(n_report, 32, generator=gen), contexts)
    sigma = 0.2 + 0.6 * torch.rand((), generator=gen).item()
    return sample, x0, eps, sigma


def build(checkpointing: bool = True) -> torch.nn.Module:
    model = random_model(seed=0).train()
    model.enable_gradient_checkpointing(checkpointing)
    return model


def loss_of(model: torch.nn.Module, step: int, indices: list[int]) -> torch.Tensor:
    from zwsi.flow import flow_loss
    from zwsi.sampling import sequence_denoiser

    items = [window(i, step) for i in indices]
    denoise = sequence_denoiser(model, [s for s, _, _, _ in items])
    sigma = torch.tensor([sg for _, _, _, sg in items])
    return flow_loss(denoise, [x0 for _, x0, _, _ in items], sigma, eps=[e for _, _, e, _ in items])


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: range, rank: int = 0,
          world: int = 1) -> list[float]:
    """Steps of the global batch, this rank's contiguous share of it; returns the global mean loss of each step."""
    share = GLOBAL_BATCH // world
    losses = []
    for step in steps:
        loss = loss_of(model, step, list(range(rank * share, (rank + 1) * share)))
        loss.backward()  # FSDP averages the gradients over the ranks: the full batch's mean gradient
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(value)
            value /= world
        losses.append(float(value))
    return losses


def optimizer_of(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def shard(model: torch.nn.Module, mesh: object) -> int:
    """Apply the FSDP config's FSDP2 wrapping; returns the number of sharded units."""
    cfg = yaml.safe_load(FSDP_CONFIG.read_text())
    fsdp = cfg["fsdp_config"]
    if cfg["distributed_type"] != "FSDP" or int(fsdp["fsdp_version"]) != 2:
        raise ValueError(f"{FSDP_CONFIG} is not an FSDP2 config")
    if fsdp["fsdp_auto_wrap_policy"] != "TRANSFORMER_BASED_WRAP":
        raise ValueError(f"{FSDP_CONFIG}: unsupported wrap policy {fsdp['fsdp_auto_wrap_policy']!r}")
    from torch.distributed.fsdp import fully_shard

    classes = {c.strip() for c in str(fsdp["fsdp_transformer_layer_cls_to_wrap"]).split(",")}
    reshard = bool(fsdp["fsdp_reshard_after_forward"])
    units = [m for m in model.modules() if type(m).__name__ in classes]
    if not units:
        raise ValueError(f"no module of class {classes} in the model")
    for m in units:
        fully_shard(m, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard)
    return len(units) + 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_state_dict,
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    ckpt = args.out / "checkpoint"

    model = build()
    units = shard(model, mesh)
    sharded = all(isinstance(p, DTensor) for p in model.parameters())
    opt = optimizer_of(model)
    first = train(model, opt, range(SAVE_AT), rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(ckpt))
    rest = train(model, opt, range(SAVE_AT, STEPS), rank, world)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    resumed_model = build()
    shard(resumed_model, mesh)
    resumed_opt = optimizer_of(resumed_model)
    msd, osd = get_state_dict(resumed_model, resumed_opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(ckpt))
    set_state_dict(resumed_model, resumed_opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = train(resumed_model, resumed_opt, range(SAVE_AT, STEPS), rank, world)
    if rank == 0:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in full.items()}, str(args.out / "final.safetensors"))
        (args.out / "losses.json").write_text(json.dumps({
            "world": world, "units": units, "sharded": sharded, "losses": first + rest, "resumed": resumed,
            "pid": os.getpid()}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
