"""Limits a generation request must fit before any work, and what the job will need in memory and on disk.

`check_request_size` runs before the model is loaded: the slide's level-0 pixel count against `MAX_PIXELS`
(200,000 × 200,000 px, the largest slides scanners make; ``--max-pixels`` raises it). `check_geometry` refuses
target windows beyond `MAX_WINDOW_TOKENS` per side (a 256-token window is 4096² px and a 65,536-token sequence;
attention over 100,000² tokens would ask for terabytes; ``--max-window-tokens`` raises it). `estimate_job` sums the
work stores and the TIFF (disk) and the largest buffers besides the model (memory); `check_disk` refuses a job the
output folder cannot hold.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PIXELS = 200_000 * 200_000
MAX_WINDOW_TOKENS = 256
JPEG_RATIO = 0.1  # a JPEG q90 H&E pyramid is about a tenth of its raw RGB (benchmarks/RESULTS.md: 349 MB for 32,768²)
LOSSLESS_RATIO = {"deflate": 0.6, "lzw": 0.7, "zstd": 0.55, "none": 1.0}


@dataclass(frozen=True)
class JobEstimate:
    """What a generation job needs besides the model weights (bytes)."""

    pixels: int
    work_disk: int
    tiff_disk: int
    memory: int

    @property
    def disk(self) -> int:
        return self.work_disk + self.tiff_disk

    def describe(self) -> str:
        return (f"{self.pixels / 1e9:.2f} gigapixels; about {self.disk / 1e9:.2f} GB of disk while it runs "
                f"({self.work_disk / 1e9:.2f} GB work stores, removed at the end, {self.tiff_disk / 1e9:.2f} GB TIFF) "
                f"and {self.memory / 1e9:.2f} GB of memory besides the model")


def check_request_size(width_um: float, height_um: float, mpp: float, max_pixels: int | None = None) -> int:
    """The level-0 pixel count of a request; raises ValueError beyond the limit, before anything is loaded."""
    for name, value in (("--width-um", width_um), ("--height-um", height_um), ("--mpp", mpp)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    limit = MAX_PIXELS if max_pixels is None else int(max_pixels)
    w, h = math.ceil(width_um / mpp), math.ceil(height_um / mpp)
    pixels = w * h
    if pixels > limit:
        raise ValueError(f"--width-um {width_um:g} x --height-um {height_um:g} at --mpp {mpp:g} is {w:,} x {h:,} px "
                         f"= {pixels:.3g} pixels, beyond the limit of {limit:.3g} ({math.isqrt(limit):,}² px); ask "
                         f"for a smaller slide, a coarser --mpp, or raise the limit with --max-pixels")
    return pixels


def check_geometry(window_tokens: int, max_window_tokens: int | None = None) -> None:
    """Refuse a target window beyond the limit (the sequence, and attention's memory, grows with its square)."""
    limit = MAX_WINDOW_TOKENS if max_window_tokens is None else int(max_window_tokens)
    if window_tokens > limit:
        raise ValueError(f"window_tokens = {window_tokens} ({window_tokens ** 2:,} target tokens a window) is beyond "
                         f"the limit of {limit}; use a config with smaller windows or raise the limit with "
                         f"--max-window-tokens")


def estimate_job(plan: Any, compression: str, latent_bytes: int = 2) -> JobEstimate:
    """Disk and memory of a planned job: latent and pixel stores of every level, the TIFF, the largest buffers."""
    cfg = plan.config
    latents = sum(cfg.latent_channels * lv.latent_shape[0] * lv.latent_shape[1] * latent_bytes for lv in plan.levels)
    pixel_store = sum(3 * lv.slide_pixels[0] * lv.slide_pixels[1] for lv in plan.levels)  # upper bound (raw)
    h, w = plan.levels[0].slide_pixels
    raw = 3 * h * w * 4 // 3  # the pyramid: 1 + 1/4 + 1/16 + ...
    ratio = JPEG_RATIO if compression == "jpeg" else LOSSLESS_RATIO.get(compression, 1.0)
    tiff = int(raw * ratio)
    window_px = cfg.window_latents * cfg.vae_factor
    memory = (2 * 256 * w * 3  # the writer's two level-0 bands
              + 4 * 3 * (window_px + 2 * cfg.vae_factor * 16) * w  # one float band of the VAE decode
              + 200 * 4_000_000)  # the tissue mask at its cap
    return JobEstimate(h * w, latents + pixel_store + tiff // 3, tiff, memory)


def check_disk(estimate: JobEstimate, folder: Path) -> None:
    """Refuse a job whose work stores and TIFF cannot fit in the output folder's free space."""
    free = shutil.disk_usage(folder).free
    if estimate.disk > free:
        raise ValueError(f"the job needs about {estimate.disk / 1e9:.2f} GB of disk and {folder} has "
                         f"{free / 1e9:.2f} GB free; free some space or write elsewhere")
