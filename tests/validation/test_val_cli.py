"""`zwsi validate` on the real CMU-1-Small-Region slide against a converted copy and a degraded copy of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import slide_io
from slide_io.writer import write_pyramid
from tests.conftest import shared_file
from validation import perturb
from zwsi.cli import main

WINDOW = 1024
ARGS = ["--mpp", "0.499", "0.998", "--max-tiles", "16", "--resamples", "60", "--paired", "--window", str(WINDOW)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Validate a JPEG-converted copy and a degraded copy (stain shift, blur, noise, brightness seams on the
    1024-px window grid) of the real slide against the real slide."""
    real = shared_file("wsi/CMU-1-Small-Region.svs")
    tmp = tmp_path_factory.mktemp("validate")
    with slide_io.open_slide(real) as slide:
        size, mpp = slide.dimensions, slide.mpp.x
        pixels = slide.read_region((0, 0), 0, size, as_array=True)
    degraded = perturb.window_offsets(perturb.noise(perturb.blur(perturb.stain_shift(pixels), 1.5), 8.0), WINDOW, 20.0)
    out = {}
    for name, image in (("converted", pixels), ("degraded", degraded)):
        path = write_pyramid(tmp / f"{name}.tif", lambda x, y, w, h, im=image: im[y:y + h, x:x + w], size=size,
                             mpp=mpp, tile_size=256)
        assert main(["validate", "--real", str(real), "--synthetic", str(path), "--out", str(tmp / name), *ARGS]) == 0
        out[name] = (json.loads((tmp / name / "metrics.json").read_text()), tmp / name)
    return out


def test_degraded_copy_scores_worse_where_the_damage_is(runs):
    conv, deg = runs["converted"][0], runs["degraded"][0]
    assert "efficientnet_lite0" in conv["feature_extractor"]
    for key in ("0.50 µm/px", "1.00 µm/px"):
        c, d = conv["levels"][key], deg["levels"][key]
        assert d["features"]["frechet_distance"]["value"] > 2 * c["features"]["frechet_distance"]["value"]
        assert d["features"]["mmd"]["value"] > c["features"]["mmd"]["value"] + 10
        assert d["paired"]["ssim"]["value"] < c["paired"]["ssim"]["value"] - 0.1
        assert d["paired"]["psnr_db"]["value"] < c["paired"]["psnr_db"]["value"] - 5
        assert d["stain_vectors"]["hematoxylin_angle_deg"]["value"] > c["stain_vectors"]["hematoxylin_angle_deg"]["value"] + 2
        assert d["statistics"]["eosin"]["ratio"]["value"] < 0.8 < c["statistics"]["eosin"]["ratio"]["value"]
    # a JPEG q90 re-encode stays close to the original
    assert conv["levels"]["0.50 µm/px"]["paired"]["psnr_db"]["value"] > 27
    assert conv["levels"]["0.50 µm/px"]["paired"]["ssim"]["value"] > 0.9


def test_findings_name_stain_and_seams_for_the_degraded_copy_only(runs):
    conv, deg = runs["converted"][0], runs["degraded"][0]
    text = " | ".join(deg["findings"])
    assert "stain shift" in text and "seams in degraded.tif" in text
    assert not any(w in " | ".join(conv["findings"]) for w in ("stain shift", "seams", "blur:", "] noise:"))


def test_planted_seams_are_located_on_the_window_grid(runs):
    synth = runs["degraded"][0]["slides"]["synthetic"][0]
    real = runs["degraded"][0]["slides"]["real"][0]
    seams = synth["seams"]["0.50 µm/px"]
    assert seams["flagged"] and all(s["position"] % WINDOW == 0 for s in seams["flagged"])
    assert seams["score"] > 1.5 > 1.1 > real["seams"]["0.50 µm/px"]["score"]
    assert runs["converted"][0]["slides"]["synthetic"][0]["seams"]["0.50 µm/px"]["flagged"] == []


def test_pyramid_levels_of_the_written_copies_agree(runs):
    levels = runs["converted"][0]["slides"]["synthetic"][0]["level_consistency"]
    assert len(levels) >= 3 and all(lc["psnr"] > 30 and lc["ssim"] > 0.9 for lc in levels)
    assert runs["converted"][0]["slides"]["real"][0]["level_consistency"] == []  # one level: nothing to compare


def test_report_is_self_contained_html(runs):
    html = (runs["degraded"][1] / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]*)"', html)
    assert len(sources) >= 8 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "efficientnet_lite0" in html and "Findings" in html and "Zoomed crops" in html
    assert "<script" not in html and "http" not in html.replace("https://arxiv", "")


def test_bad_cli_input_fails_with_the_reason(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["validate", "--real", str(tmp_path / "nope.svs"), "--synthetic", str(tmp_path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"zwsi validate: --real {tmp_path / 'nope.svs'} does not exist"]
    assert not out.exists()  # no empty output folder left behind
    assert main(["validate", "--real", "x", "--synthetic", "y", "--out", str(out), "--tile-size", "128"]) == 2
    assert "tile_size=128 must be at least 161" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["validate", "--real", str(tmp_path), "--synthetic", str(tmp_path), "--out",
                 str(tmp_path / "file" / "sub")]) == 2
    assert "is a file, so no folder can be made under it" in capsys.readouterr().err
