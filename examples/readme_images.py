"""The README's pictures: thumbnail and a 20x (0.5 µm/px) crop of a generated slide beside the real training slide.

    python examples/readme_images.py demo.tiff docs/images

writes ``synthetic_thumbnail.png``, ``synthetic_20x.png``, ``real_thumbnail.png`` and ``real_20x.png`` (small PNGs). The
crop is the 512 x 512 px (256 µm) square with the most tissue on a 256 px grid, found on the thumbnail's tissue mask.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from slide_io import detect_tissue, open_slide
from zwsi.default_model import FOLDER

CROP_UM = 256.0
THUMB = 480


def tissue_crop(path: Path, crop_um: float = CROP_UM) -> tuple[Image.Image, Image.Image]:
    """(thumbnail, 0.5 µm/px crop of the densest tissue square)."""
    with open_slide(path) as slide:
        thumb = slide.get_thumbnail((THUMB, THUMB)).convert("RGB")
        mask = detect_tissue(slide, mpp=8.0)
        k = max(1, round(crop_um / 8.0))  # crop side in mask pixels
        m = mask.mask.astype(np.float64)
        best, where = -1.0, (0, 0)
        for y in range(0, max(1, m.shape[0] - k + 1), max(1, k // 2)):
            for x in range(0, max(1, m.shape[1] - k + 1), max(1, k // 2)):
                score = m[y : y + k, x : x + k].sum()
                if score > best:
                    best, where = score, (y, x)
        y_px = round(where[0] * mask.mpp.y / slide.mpp.y)
        x_px = round(where[1] * mask.mpp.x / slide.mpp.x)
        side = round(crop_um / 0.5)
        crop = slide.read_region_mpp((x_px, y_px), 0.5, (side, side))
    return thumb, Image.fromarray(np.asarray(crop)).convert("RGB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synthetic", type=Path, help="a generated slide (e.g. demo.tiff)")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--real", type=Path, default=FOLDER / "slide" / "CMU-1-Small-Region.svs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in (("synthetic", args.synthetic), ("real", args.real)):
        thumb, crop = tissue_crop(path)
        thumb.save(args.out / f"{name}_thumbnail.png", optimize=True)
        crop.save(args.out / f"{name}_20x.png", optimize=True)
        print(f"{name}: {args.out / f'{name}_thumbnail.png'} {thumb.size}, {args.out / f'{name}_20x.png'} {crop.size}")


if __name__ == "__main__":
    main()
