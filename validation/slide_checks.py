"""Whole-slide checks that read a slide through `slide_io`: seams on the window grid and level consistency.

Both read bounded regions, so they work on gigapixel slides: a level that fits in `max_pixels` is read whole,
otherwise regions around sampled window-grid crossings (seams) or sampled places (consistency) are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from validation.magnification import consistency
from validation.seams import FLAG_RATIO, Seam, SeamReport, seam_report

MAX_PIXELS = 40_000_000


def slide_seam_report(slide: object, mpp: float, window: int, *, max_pixels: int = MAX_PIXELS, max_regions: int = 16,
                      seed: int = 0, flag_ratio: float = FLAG_RATIO) -> SeamReport:
    """Seam report of a slide read at `mpp`, for windows of `window` px at that µm/px on a grid from (0, 0).

    Args:
        slide: an open `slide_io.Slide`.
        mpp: µm/px the windows were generated at.
        window: window side in pixels at `mpp`.
        max_pixels: read the level whole up to this many pixels, else sample regions.
        max_regions: regions of 2·window around grid crossings, when sampling.
        seed: region sampling seed.
        flag_ratio: see `seam_report`.

    Returns:
        A `SeamReport` whose seam positions are in pixels at `mpp` from the slide's top-left.
    """
    base = slide.mpp.x  # type: ignore[attr-defined]
    w0, h0 = slide.dimensions  # type: ignore[attr-defined]
    w, h = int(w0 * base / mpp), int(h0 * base / mpp)
    if w * h <= max_pixels:
        image = slide.read_region_mpp((0, 0), mpp, (w, h))  # type: ignore[attr-defined]
        return seam_report(image, window, flag_ratio=flag_ratio)
    crossings = [(x, y) for y in range(window, h - window, window) for x in range(window, w - window, window)]
    rng = np.random.default_rng(seed)
    if len(crossings) > max_regions:
        crossings = [crossings[i] for i in sorted(rng.choice(len(crossings), max_regions, replace=False))]
    segments: list[Seam] = []
    border = inside = 0.0
    for x, y in crossings:
        x0, y0 = x - window // 2, y - window // 2  # region of one window centred on the crossing: borders at window/2
        loc0 = (round(x0 * mpp / base), round(y0 * mpp / base))
        region = slide.read_region_mpp(loc0, mpp, (window, window))  # type: ignore[attr-defined]
        rep = seam_report(region, window // 2, origin=(0, 0), flag_ratio=flag_ratio)
        border += rep.border_energy
        inside += rep.inside_energy
        segments += [Seam(s.axis, s.position + (x0 if s.axis == "x" else y0),
                          s.start + (y0 if s.axis == "x" else x0), s.end + (y0 if s.axis == "x" else x0), s.ratio)
                     for s in rep.segments]
    score = border / inside if inside > 0 else float("nan")
    return SeamReport(float(score), border, inside, tuple(segments), flag_ratio)


@dataclass(frozen=True)
class LevelConsistency:
    """Agreement of file level `fine` downsampled by `factor` with level `fine + 1` (mean over regions)."""

    fine: int
    factor: int
    psnr: float
    ssim: float
    n_regions: int

    def to_dict(self) -> dict[str, float]:
        return {"fine": self.fine, "factor": self.factor, "psnr": self.psnr, "ssim": self.ssim,
                "n_regions": self.n_regions}


def slide_level_consistency(slide: object, *, region: int = 256, max_regions: int = 4, seed: int = 0
                            ) -> list[LevelConsistency]:
    """Cross-magnification consistency of every pair of adjacent pyramid levels with an integer downsample.

    Args:
        slide: an open `slide_io.Slide`.
        region: side in pixels of each region at the coarser level.
        max_regions: regions per level pair (seeded places inside the coarser level).
        seed: placement seed.

    Returns:
        One entry per level pair; empty for a single-level slide.
    """
    rng = np.random.default_rng(seed)
    out = []
    downsamples = slide.level_downsamples  # type: ignore[attr-defined]
    for k in range(slide.level_count - 1):  # type: ignore[attr-defined]
        ratio = downsamples[k + 1] / downsamples[k]
        factor = round(ratio)
        if factor < 2 or abs(ratio - factor) > 0.02:
            continue
        cw, ch = slide.level_dimensions[k + 1]  # type: ignore[attr-defined]
        size = min(region, cw, ch)
        if size < 16:
            continue
        psnrs, ssims = [], []
        for _ in range(max_regions):
            cx, cy = int(rng.integers(0, cw - size + 1)), int(rng.integers(0, ch - size + 1))
            loc0 = (round(cx * downsamples[k + 1]), round(cy * downsamples[k + 1]))
            coarse = slide.read_region(loc0, k + 1, (size, size), as_array=True)  # type: ignore[attr-defined]
            fine = slide.read_region(loc0, k, (size * factor, size * factor), as_array=True)  # type: ignore[attr-defined]
            m = consistency(fine, coarse, factor)
            psnrs.append(min(m["psnr"], 100.0))
            ssims.append(m["ssim"])
        out.append(LevelConsistency(k, factor, float(np.mean(psnrs)), float(np.mean(ssims)), len(psnrs)))
    return out
