"""Scale bars and magnification captions burnt into the pictures of a validation report.

A bar of ``um`` micrometres on an image of ``mpp`` µm/px is exactly ``round(um / mpp)`` pixels long (exact whenever
um / mpp is a whole number), drawn black on a white box at the bottom left, with its length written above it; the
caption ("20×, 0.5 µm/px") sits at the top left.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from validation.verdict import magnification_name

NICE_UM = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000)
"""Bar lengths in µm a scale bar is chosen from."""
BAR_RGB = (0, 0, 0)


@dataclass(frozen=True)
class ScaleBar:
    """Where a bar was drawn: its length in µm and px, its top-left corner and thickness (px)."""

    um: float
    length_px: int
    x: int
    y: int
    thickness: int


def bar_length_px(um: float, mpp: float) -> int:
    """Pixels of a bar of ``um`` µm at ``mpp`` µm/px: um / mpp, rounded to the nearest pixel.

    Raises:
        ValueError: um or mpp not > 0.
    """
    if not (um > 0 and mpp > 0):
        msg = f"a scale bar needs um > 0 and mpp > 0; got um={um}, mpp={mpp}"
        raise ValueError(msg)
    return round(um / mpp)


def choose_bar_um(width_px: int, mpp: float, max_fraction: float = 0.3) -> float:
    """The longest of `NICE_UM` whose bar fits in ``max_fraction`` of the image width (the shortest otherwise)."""
    fits = [um for um in NICE_UM if bar_length_px(um, mpp) <= max_fraction * width_px]
    return float(fits[-1] if fits else NICE_UM[0])


def um_text(um: float) -> str:
    """"100 µm", "2 mm"."""
    return f"{um / 1000:g} mm" if um >= 1000 else f"{um:g} µm"


def caption_text(mpp: float) -> str:
    """"20×, 0.5 µm/px"."""
    return f"{magnification_name(mpp)}, {float(f'{mpp:.3g}'):g} µm/px"


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    from matplotlib import font_manager

    try:  # DejaVu Sans ships with matplotlib and has µ and ×
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default()


def draw_scale_bar(image: NDArray[np.uint8] | Image.Image, mpp: float, *, um: float | None = None,
                   caption: str | None = None) -> tuple[NDArray[np.uint8], ScaleBar]:
    """A copy of ``image`` with a scale bar and a magnification caption.

    Args:
        image: (H, W, 3) uint8 or a PIL image.
        mpp: µm per pixel of ``image`` as shown (after any resizing).
        um: bar length in µm (default: `choose_bar_um`).
        caption: top-left text (default: `caption_text`, e.g. "20×, 0.5 µm/px"); "" for none.

    Returns:
        The image (H, W, 3) uint8 and where the bar is.
    """
    img = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB").copy()
    w, h = img.size
    um = um if um is not None else choose_bar_um(w, mpp)
    length = bar_length_px(um, mpp)
    thickness = max(3, h // 60)
    size = max(10, min(h, w) // 22)
    font = _font(size)
    draw = ImageDraw.Draw(img)
    margin = max(4, w // 60)
    label = um_text(um)
    tw = draw.textlength(label, font=font)
    x, y = margin, h - margin - thickness
    box_w = max(length, int(tw)) + 2 * 4
    draw.rectangle((x - 4, y - size - 8, x - 4 + box_w, h - margin + 4), fill=(255, 255, 255))
    draw.text((x, y - size - 5), label, fill=BAR_RGB, font=font)
    draw.rectangle((x, y, x + length - 1, y + thickness - 1), fill=BAR_RGB)
    text = caption_text(mpp) if caption is None else caption
    if text:
        cw = draw.textlength(text, font=font)
        draw.rectangle((margin - 4, margin - 3, margin + int(cw) + 4, margin + size + 4), fill=(255, 255, 255))
        draw.text((margin, margin - 1), text, fill=BAR_RGB, font=font)
    return np.asarray(img), ScaleBar(um, length, x, y, thickness)


def with_scale_bar(image: NDArray[np.uint8] | Image.Image, mpp: float | None, max_side: int | None = None
                   ) -> NDArray[np.uint8]:
    """``image`` downscaled to ``max_side`` (when larger) with a scale bar for its shown µm/px; unchanged when the
    µm/px is unknown."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    width = img.size[0]
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))),
                         Image.Resampling.LANCZOS)
    if mpp is None:
        return np.asarray(img.convert("RGB"))
    return draw_scale_bar(img, mpp * width / img.size[0])[0]
