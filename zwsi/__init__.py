"""Z-WSI: report-conditioned synthetic whole-slide images with Z-Image's single-stream diffusion transformer."""

__version__ = "0.1.0"
