"""Controlled fine-tuning of the S3-DiT on tile-level sequences (DESIGN §3): dataset preparation, training samples
that match generation's four context patterns, flow matching, LoRA/full/frozen-group control, checkpoints.

Heavy modules (torch, accelerate, peft) are imported from their submodules:
`zwsi.train.core` (the training core both trainers use: loop, schedule, EMA, non-finite-loss policy, checkpoints,
resume, metrics), `zwsi.train.state` (the checkpoint layout), `zwsi.train.trainer` (the S3-DiT trainer),
`zwsi.train.config` (its config; the core's sections), `zwsi.train.prepare` / `zwsi.train.dataset` (the dataset),
`zwsi.train.samples` (training windows), `zwsi.train.control` (policies, LoRA save/merge). The VAE trainer is
`zwsi.vae.train`.
"""

from __future__ import annotations
