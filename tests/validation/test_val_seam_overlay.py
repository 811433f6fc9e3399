"""The HTML report draws flagged window borders on the synthetic slide's thumbnail, where they are."""

from __future__ import annotations

import numpy as np
from PIL import Image

from validation.html_report import draw_flagged_seams


def test_flagged_borders_are_drawn_at_their_place_scaled_to_the_thumbnail() -> None:
    thumb = Image.new("RGB", (100, 80), (255, 255, 255))
    # at 0.5 µm/px: a vertical border at x = 512 px over rows [0, 512), a horizontal one at y = 512 over x [512, 1024);
    # the thumbnail is 8 µm/px, so 16x smaller: x = 32 over rows 0..32, y = 32 over x 32..64
    seams = {"0.50 µm/px": {"mpp": 0.5, "flagged": [
        {"axis": "x", "position": 512, "start": 0, "end": 512, "ratio": 3.0},
        {"axis": "y", "position": 512, "start": 512, "end": 1024, "ratio": 2.5}]},
        "2.00 µm/px": {"mpp": 2.0, "flagged": []}}
    out, drawn = draw_flagged_seams(thumb, seams, thumb_mpp=8.0)
    red = np.all(np.asarray(out) == (230, 0, 0), axis=-1)
    assert drawn == 2
    assert red[5:30, 32].all() and red[32, 35:62].all()  # on the lines
    assert not red[40:, :30].any() and not red[:, 70:].any()  # nowhere else
    assert np.asarray(thumb).min() == 255  # the original thumbnail is left as it was
