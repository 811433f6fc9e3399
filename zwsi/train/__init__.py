"""Controlled fine-tuning of the S3-DiT on tile-level sequences (DESIGN §3): dataset preparation, training samples
that match generation's four context patterns, flow matching, LoRA/full/frozen-group control, checkpoints.

Heavy modules (torch, accelerate, peft) are imported from their submodules:
`zwsi.train.config` (YAML -> dataclasses), `zwsi.train.prepare` / `zwsi.train.dataset` (the dataset),
`zwsi.train.samples` (training windows), `zwsi.train.control` (policies, LoRA save/merge), `zwsi.train.state`
(checkpoints), `zwsi.train.trainer` (the loop).
"""

from __future__ import annotations
