"""Choose the built-in model's codec by measurement: reconstruction of unseen H&E, sharpness, and CPU speed.

Candidates are VAE folders (`zwsi.vae.VAE.from_folder`: AutoencoderKL or AutoencoderTiny) or ``taef1:FOLDER`` for
the pretrained TAEF1 pair (`zwsi.taef1`). Images: tile files, and slides cut into 256 px crops at 0.5, 2 and
8 µm/px (the generation ladder), e.g. the held-out quarter of the CMU slide. For each candidate and image set:
PSNR and SSIM of encode → decode (`validation.image_metrics.paired_ssim_psnr`), sharpness (variance of the
Laplacian) of the reconstruction over the original's, and decode / encode seconds per megapixel at the given
threads (256² batches of 8, channels-last, the second of two timed passes).

    python benchmarks/codec_compare.py --codec v1=zwsi/default_model/vae --codec taef1=taef1:../shared/weights/taef1 \\
        --codec ours=runs/default/codec/vae --slide runs/default/slides/holdout/CMU-1-Small-Region.tif \\
        --images ../shared/data/tiles/mopadi/TCGA-3X-AAVA-01Z-00-DX1__0_0_3_506.jpg ... --threads 2

The ratio column is each candidate's decode time over the first candidate's, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

MPPS = (0.5, 2.0, 8.0)
CROP = 256


def load_codec(spec: str):
    from zwsi.vae import VAE

    if spec.startswith("taef1:"):
        from zwsi.taef1 import taef1_vae

        return taef1_vae(spec.split(":", 1)[1])
    return VAE.from_folder(spec)


def slide_crops(path: str, mpp: float, n: int = 16) -> np.ndarray:
    """Up to ``n`` CROP² crops of a slide at ``mpp`` on a grid, the ones with most tissue (not glass)."""
    import slide_io
    from validation.seams import glass_blocks

    with slide_io.open_slide(path) as slide:
        w0, h0 = slide.dimensions
        w, h = int(w0 * slide.mpp.x / mpp), int(h0 * slide.mpp.y / mpp)
        side = min(CROP, (min(w, h) // 16) * 16)
        image = slide.read_region_mpp((0, 0), mpp, (w, h))
    crops = [image[y : y + side, x : x + side] for y in range(0, h - side + 1, side) for x in range(0, w - side + 1, side)]
    tissue = [float((~glass_blocks(c, 16)).mean()) for c in crops]
    order = np.argsort(tissue)[::-1][:n]
    return np.stack([crops[i] for i in order if tissue[i] > 0.5] or [crops[order[0]]])


def read_images(paths: list[str]) -> np.ndarray:
    from PIL import Image

    crops = []
    for p in paths:
        rgb = np.array(Image.open(p).convert("RGB"))
        side = (min(rgb.shape[:2], default=0) // 16) * 16
        side = min(side, CROP)
        crops.append(rgb[:side, :side])
    side = min(c.shape[0] for c in crops)
    return np.stack([c[:side, :side] for c in crops])


def sharpness(images: np.ndarray) -> float:
    from scipy.ndimage import laplace

    return float(np.mean([laplace(img.astype(np.float64).mean(-1)).var() for img in images]))


def seconds_per_mp(fn, x: torch.Tensor) -> float:
    with torch.inference_mode():
        fn(x)
        start = time.perf_counter()
        fn(x)
    return (time.perf_counter() - start) / (x.shape[0] * CROP * CROP / 1e6)


def evaluate(vae, sets: dict[str, np.ndarray]) -> dict[str, object]:
    from validation.image_metrics import paired_ssim_psnr

    out: dict[str, object] = {}
    for name, images in sets.items():
        recon = vae.decode(vae.encode(images))
        ssim, psnr = paired_ssim_psnr(images, recon)
        out[name] = {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)),
                     "sharpness_ratio": sharpness(recon) / sharpness(images), "n": len(images)}
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, CROP, CROP, 3), dtype=np.uint8))
    z = vae.encode(pixels)
    out["decode_s_per_mp"] = seconds_per_mp(vae.decode, z)
    out["encode_s_per_mp"] = seconds_per_mp(vae.encode, pixels)
    out["params"] = sum(p.numel() for p in vae.autoencoder.parameters())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", action="append", required=True, help="LABEL=FOLDER or LABEL=taef1:FOLDER")
    p.add_argument("--slide", action="append", default=[], help="a slide cut into crops at 0.5, 2 and 8 µm/px")
    p.add_argument("--images", nargs="*", default=[], help="tile images (one set)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sets: dict[str, np.ndarray] = {}
    for slide in args.slide:
        for mpp in MPPS:
            sets[f"{Path(slide).stem}@{mpp:g}"] = slide_crops(slide, mpp)
    if args.images:
        sets["tiles"] = read_images(args.images)
    rows = []
    for spec in args.codec:
        label, folder = spec.split("=", 1)
        rows.append({"codec": label, "source": folder, **evaluate(load_codec(folder), sets)})
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    base = rows[0]["decode_s_per_mp"]
    print(f"{'codec':8} {'set':28} {'n':>3} {'PSNR dB':>8} {'SSIM':>6} {'sharpness':>9}")
    for r in rows:
        for name in sets:
            m = r[name]
            print(f"{r['codec']:8} {name:28} {m['n']:>3} {m['psnr']:>8.2f} {m['ssim']:>6.3f} {m['sharpness_ratio']:>9.2f}")
    print(f"\n{'codec':8} {'params':>9} {'decode s/MP':>12} {'encode s/MP':>12} {'decode vs ' + rows[0]['codec']:>14}")
    for r in rows:
        print(f"{r['codec']:8} {r['params']:>9,} {r['decode_s_per_mp']:>12.2f} {r['encode_s_per_mp']:>12.2f} "
              f"{r['decode_s_per_mp'] / base:>14.2f}")


if __name__ == "__main__":
    main()
