"""Glass clean-up of decoded pixels: hand-computed weights and pixels."""

from __future__ import annotations

import numpy as np
import pytest

from zwsi.generate.glass import clean_glass, glass_weight


def test_glass_weight_by_hand() -> None:
    rgb = np.array([[222, 211, 219],   # the small VAE's grey-lilac glass: v .871, s .0495 -> 1
                    [200, 150, 190],   # eosin: s .25 -> 0
                    [100, 100, 100],   # dark grey: v .392 -> 0
                    [204, 190, 200],   # v .8 (pale 1), s 14/204 = .0686 -> (.12 - .0686) / .06 = .8562
                    [255, 255, 255],   # white: 1
                    [0, 0, 0]], np.uint8)
    w = glass_weight(rgb)
    np.testing.assert_allclose(w, [1.0, 0.0, 0.0, (0.12 - 14 / 204) / 0.06, 1.0, 0.0], atol=1e-5)


def test_clean_glass_moves_glass_to_the_background_and_leaves_tissue_exact() -> None:
    rgb = np.array([[[222, 211, 219], [200, 150, 190]], [[204, 190, 200], [60, 30, 90]]], np.uint8)  # (2, 2, 3)
    out = clean_glass(rgb)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [200, 150, 190] and out[1, 1].tolist() == [60, 30, 90]  # tissue untouched
    w = (0.12 - 14 / 204) / 0.06  # 0.8562: 204 + 51 w, 190 + 65 w, 200 + 55 w
    assert out[1, 0].tolist() == [round(204 + 51 * w), round(190 + 65 * w), round(200 + 55 * w)] == [248, 246, 247]
    assert clean_glass(rgb, background=(240, 240, 240))[0, 0].tolist() == [240, 240, 240]


def test_config_switch() -> None:
    from zwsi.generate.config import GenerateConfig

    assert GenerateConfig.preset("zwsi-small").glass_cleanup is True
    assert GenerateConfig.preset("z-image-turbo").glass_cleanup is False
    with pytest.raises(ValueError, match="glass_cleanp"):
        GenerateConfig.preset("tiny").merged({"glass_cleanp": True})
