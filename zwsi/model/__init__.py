"""The S3-DiT (Z-Image's single-stream diffusion transformer) and its checkpoint IO."""

from zwsi.model.config import S3DiTConfig

__all__ = ["S3DiTConfig"]
