"""The S3-DiT (Z-Image's single-stream diffusion transformer) and its checkpoint IO."""

from zwsi.model.checkpoint import load_transformer, save_pretrained
from zwsi.model.config import S3DiTConfig
from zwsi.model.s3dit import S3DiT
from zwsi.model.sequence import ImageSegment, SequenceSample, grid_positions, report_token_count, t2i_sample

__all__ = [
    "ImageSegment",
    "S3DiT",
    "S3DiTConfig",
    "SequenceSample",
    "grid_positions",
    "load_transformer",
    "report_token_count",
    "save_pretrained",
    "t2i_sample",
]
