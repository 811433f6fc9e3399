"""The S3-DiT (Z-Image's single-stream diffusion transformer) and its checkpoint IO."""
