"""The clinician-facing layer of `zwsi validate`: verdict words from fixed thresholds, premises that make a check
"not applicable", the training-data warning for the bundled slide, scale bars of exact length, and a small
end-to-end run whose report leads with them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import slide_io
from slide_io.writer import write_pyramid
from validation.morphology import tile_statistics
from validation.scalebar import bar_length_px, choose_bar_um, draw_scale_bar
from validation.summary import NOT_RECORDED, conditioning_rows
from validation.verdict import (
    THRESHOLDS,
    apply_premises,
    bundled_training_slide,
    level_verdict,
    magnification_name,
    reference_overlap,
    statistic_premises,
    training_slides_of,
)


def _level(auc: float, low: float, *, stat_differs: bool = False, n: int = 32, flagged: int = 0) -> dict:
    feat = {"value": 1.0, "low": 0.5, "high": 1.5, "p_value": 0.5, "beyond_reference": False,
            "real_vs_real": {"value": 1.0}}
    stat = {"beyond_reference": stat_differs, "applicable": True}
    level = {"mpp": 0.5, "n_real": n, "n_synthetic": n, "c2st": {"auc": auc, "low": low, "high": min(1.0, auc + 0.05)},
             "features": {"frechet_distance": feat, "mmd": feat}, "statistics": {"nuclei_density": stat},
             "stain_vectors": {"available": False}, "diversity": {"less_diverse_than_real": False}}
    if flagged:
        level["memorisation"] = {"flagged": [{"generated": i} for i in range(flagged)]}
    return level


@pytest.mark.parametrize(("auc", "low", "differs", "flagged", "verdict"), [
    (0.97, 0.93, False, 0, "not realistic"),
    (0.90, 0.80, False, 0, "not realistic"),  # the threshold itself counts
    (0.89, 0.80, False, 0, "distinguishable from real"),
    (0.70, 0.55, False, 0, "distinguishable from real"),
    (0.95, 0.49, False, 0, "no difference detected"),  # interval reaches 0.5: the classifier is not trusted
    (0.69, 0.55, True, 0, "similar, with differences"),
    (0.55, 0.40, False, 0, "no difference detected"),
    (0.55, 0.40, False, 2, "copies training data"),
])
def test_verdict_thresholds_give_exact_words(auc, low, differs, flagged, verdict):
    v = level_verdict(_level(auc, low, stat_differs=differs, flagged=flagged), "0.50 µm/px")
    assert v["verdict"] == verdict
    assert v["text"].startswith(f"20× (0.5 µm/px): {verdict} — ")


def test_not_realistic_line_reads_as_specified():
    v = level_verdict(_level(0.97, 0.93), "0.50 µm/px")
    assert v["text"] == ("20× (0.5 µm/px): not realistic — a classifier tells synthetic from real tiles (C2ST AUC "
                         "0.97); do not use for reader studies, for training or testing diagnostic models, or as "
                         "evidence of any pathology")
    assert THRESHOLDS["c2st_not_realistic_auc"] == 0.90 and THRESHOLDS["c2st_distinguishable_auc"] == 0.70


def test_verdict_caveats_few_tiles_and_training_reference():
    v = level_verdict(_level(0.55, 0.4, n=8), "k", reference_is_training=True)
    assert v["caveats"] == ["few tiles, 8 real and 8 synthetic: weak evidence",
                            "the real reference is the model's training data, so this overstates realism"]


@pytest.mark.parametrize(("mpp", "name"), [(0.25, "40×"), (0.5, "20×"), (0.499, "20×"), (1.0, "10×"), (2.0, "5×"),
                                           (8.0, "1.25×")])
def test_magnification_names(mpp, name):
    assert magnification_name(mpp) == name


def test_tiles_without_nuclei_make_nuclei_statistics_not_applicable():
    rng = np.random.default_rng(0)
    pink = np.clip(rng.normal((230, 160, 200), 4, size=(6, 64, 64, 3)), 0, 255).astype(np.uint8)  # eosin only
    nuclear = pink.copy()
    for tile in nuclear:  # dark purple nuclei, 8 px across (≥ 8 µm² at 0.5 µm/px)
        for y, x in ((10, 10), (30, 40), (50, 20)):
            tile[y:y + 8, x:x + 8] = (70, 40, 120)
    real, synth = tile_statistics(nuclear, 0.5), tile_statistics(pink, 0.5)
    assert real["nuclei_count"].min() >= 1 and synth["nuclei_count"].max() == 0
    premises = statistic_premises(real, synth)
    assert premises["nuclei_density"] == premises["nucleus_area"] == (
        "no nuclei found in 6 of 6 synthetic tiles (needs nuclei in at least 50% of each side's tiles)")
    assert premises["eosin"] is None and premises["sharpness"] is None
    stats = {"nuclei_density": {"beyond_reference": True}, "eosin": {"beyond_reference": True}}
    apply_premises(stats, premises)
    assert stats["nuclei_density"]["status"].startswith("not applicable: no nuclei found in 6 of 6 synthetic tiles")
    assert stats["nuclei_density"]["beyond_reference"] is False and stats["eosin"]["status"] == "differs"
    glass = np.full((4, 64, 64, 3), 245, np.uint8)
    none = statistic_premises(tile_statistics(glass, 0.5), real)
    assert none["hematoxylin"].startswith("no tissue in 4 of 4 real tiles")


def test_warning_for_the_bundled_training_slide_by_hash_and_by_name(tmp_path):
    bundled = bundled_training_slide()
    warning = reference_overlap([bundled], [None])
    assert warning is not None and "byte-for-byte the built-in default model's training slide" in warning["text"]
    assert "memorisation check was skipped" in warning["text"] and "bottom quarter is held out" in warning["text"]
    renamed = shutil.copy(bundled, tmp_path / "held-out.svs")
    assert "byte-for-byte" in reference_overlap([renamed], [None])["reason"]
    assert "bottom quarter is held out" in reference_overlap([renamed], [None])["reason"]
    other = tmp_path / "other.svs"
    other.write_bytes(b"not the training slide")
    assert reference_overlap([other], [None]) is None
    assert training_slides_of({"extra": {"model": "default_model"}})[0]["name"] == "CMU-1-Small-Region.svs"
    recorded = {"extra": {"training_slides": [{"name": "other.svs"}]}}
    assert "recorded in the synthetic slide's provenance" in reference_overlap([other], [recorded])["reason"]


def test_conditioning_rows_say_not_recorded():
    rows = dict(conditioning_rows(None, "efficientnet_lite0"))
    assert rows["report text (conditioning)"] == rows["seed"] == rows["model"] == NOT_RECORDED
    rows = dict(conditioning_rows({"seed": 3, "extra": {"model": "default", "conditioning": {"text": "Skin."}}}))
    assert rows["seed"] == "3" and rows["model"] == "default" and rows["report text (conditioning)"] == "Skin."


@pytest.mark.parametrize(("um", "mpp", "width"), [(100, 0.5, 800), (50, 0.25, 800), (500, 2.0, 600), (20, 0.4, 300)])
def test_scale_bar_length_is_um_over_mpp_exactly(um, mpp, width):
    white = np.full((240, width, 3), 255, np.uint8)
    out, bar = draw_scale_bar(white, mpp, um=um, caption="")
    assert bar.length_px == bar_length_px(um, mpp) == um / mpp
    row = out[bar.y + bar.thickness // 2]
    assert int((row == 0).all(axis=1).sum()) == um / mpp  # black bar pixels on the bar's middle row
    assert choose_bar_um(800, 0.5) == 100  # the longest nice length within 30% of the width


def test_report_of_a_run_against_the_bundled_slide_leads_with_verdict_and_warning(tmp_path):
    from validation.pipeline import ValidationConfig, run_validation

    real = bundled_training_slide()
    with slide_io.open_slide(real) as slide:
        mpp = slide.mpp.x
        size = slide.dimensions
        pixels = slide.read_region((0, 0), 0, size, as_array=True)
    prov = slide_io.Provenance(seed=7, report_sha256="ab" * 32,
                               extra={"model": "default", "conditioning": {"text": "Skin, shave biopsy."}})
    synthetic = write_pyramid(tmp_path / "synthetic.tif", lambda x, y, w, h: pixels[y:y + h, x:x + w],
                              size=size, mpp=mpp, provenance=prov)
    config = ValidationConfig(mpps=[2 * mpp], max_tiles=8, n_resamples=20, ms_ssim_pairs=4, tile_size=176)
    result = run_validation([real], [synthetic], tmp_path / "out", config=config, progress=False)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["reference_warning"] is not None and m["memorisation_status"].startswith("skipped")
    (verdict,) = m["verdicts"].values()
    assert verdict["label"] == "10× (0.998 µm/px)" and "overstates realism" in verdict["text"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.index("Verdict") < page.index("What was generated") < page.index("Findings")
    assert "Skin, shave biopsy." in page and "memorisation check was skipped" in page and "Glossary" in page
    assert "Z-WSI validation report" in page
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert f"**{verdict['label']}: {verdict['verdict']}**" in summary and "Skin, shave biopsy." in summary
    assert result.metrics["conditioning"][0]["slide"] == "synthetic.tif"
