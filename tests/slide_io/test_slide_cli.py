"""`zwsi slide info|thumbnail|convert` end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

import slide_io
from zwsi.commands import slide as slide_commands


def main(argv: list[str]) -> int:
    """Run `zwsi slide ...` through this module's parser only (other command modules may be mid-edit)."""
    parser = argparse.ArgumentParser(prog="zwsi")
    slide_commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_info_json_reports_vendor_levels_mpp_and_associated(cmu, capsys):
    assert main(["slide", "info", str(cmu), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "aperio" and info["backend"] == "openslide"
    assert info["dimensions"] == [2220, 2967] and info["level_count"] == 1 and info["mpp"] == [0.499, 0.499]
    assert info["associated_images"]["label"] == [387, 463]
    assert info["synthetic"] is False and info["provenance"] is None


def test_info_text_says_synthetic(tmp_path, capsys):
    img = np.full((300, 400, 3), 200, np.uint8)
    out = slide_io.write_pyramid(tmp_path / "s.tif", lambda x, y, w, h: img[y : y + h, x : x + w], size=(400, 300),
                                 mpp=0.5, provenance=slide_io.Provenance(seed=11), tile_size=128)
    assert main(["slide", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vendor     zwsi" in text and "SYNTHETIC" in text and "level 2" in text and '"seed": 11' in text


def test_thumbnail_fits_the_size(ome, tmp_path, capsys):
    out = tmp_path / "t.png"
    assert main(["slide", "thumbnail", str(ome), str(out), "--size", "300"]) == 0
    assert Image.open(out).size == (300, 300)


def test_errors_exit_2_with_the_path(tmp_path, capsys):
    assert main(["slide", "info", str(tmp_path / "none.svs")]) == 2
    assert "SlideNotFoundError: no such slide file" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("hello")
    assert main(["slide", "convert", str(tmp_path / "a.txt"), str(tmp_path / "o.tif")]) == 2
    assert "NotASlideError" in capsys.readouterr().err and not (tmp_path / "o.tif").exists()
