"""`zwsi prepare` on the real CMU slide and real TCGA reports: latents equal the VAE's, patient splits, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import shared_file
from tests.zwsi.train.tcga import PATIENTS, make_slides, prepare_args
from zwsi.cli import main

torch.set_num_threads(1)  # the CI machine has 2 shared cores; oversubscribed OpenMP threads are 10x slower

def test_manifest_links_slide_report_patient_fields_and_splits_by_patient(prepared: Path) -> None:
    m = json.loads((prepared / "manifest.json").read_text())
    slides = {s["slide_id"]: s for s in m["slides"]}
    assert sorted(slides) == sorted(f"{p}-01Z-00-DX1" for p in PATIENTS)
    breast = slides["TCGA-A8-A09E-01Z-00-DX1"]
    assert breast["report_id"] == "TCGA-A8-A09E" and breast["patient_id"] == "TCGA-A8-A09E"
    assert breast["subtype"] == "Breast invasive carcinoma" and breast["fields"]["site"] == "breast"
    assert breast["status"] == "done" and breast["n_report_tokens"] == 64 and breast["report_truncated"]
    assert abs(breast["width_um"] - 2220 * 0.499) < 0.5 and abs(breast["height_um"] - 2967 * 0.499) < 0.5
    splits = [s["split"] for s in m["slides"]]
    assert sorted(splits) == ["test", "train", "train", "train", "val"]  # 5 patients at 0.6/0.2/0.2
    by_patient: dict[str, set[str]] = {}
    for s in m["slides"]:
        by_patient.setdefault(s["patient_id"], set()).add(s["split"])
    assert all(len(v) == 1 for v in by_patient.values())
    feats = prepared / breast["features"]
    from safetensors.torch import load_file

    assert load_file(feats)["features"].shape == (64, 384)


def test_tissue_windows_hold_the_vae_latents_of_the_slide_and_the_rest_blank_glass(prepared: Path) -> None:
    from slide_io import WindowStore, open_slide
    from zwsi.generate.pipeline import background_latents
    from zwsi.planner import PlanConfig, plan_slide
    from zwsi.vae import VAE

    m = json.loads((prepared / "manifest.json").read_text())
    entry = m["slides"][0]
    store = WindowStore.open(prepared / entry["store"], mode="r")
    assert store.levels == [0, 1]
    vae = VAE.from_folder(prepared / "vae")
    plan = plan_slide(entry["height_um"], entry["width_um"], 4.0, seed=0, coarsest_mpp=16.0, config=PlanConfig(**m["plan"]))
    assert [lv.mpp for lv in plan.levels] == [4.0, 16.0] and plan.levels[0].grid == (6, 5)
    n = plan.config.window_latents
    white = background_latents(vae, plan.config)  # blank glass: the VAE's latent at a blank window's centre
    assert np.array_equal(white[:, 2, 2], vae.encode(np.full((n * 8, n * 8, 3), 255, np.uint8)).numpy()[:, n // 2, n // 2])
    with open_slide(shared_file("wsi/CMU-1-Small-Region.svs")) as slide:
        for lv in plan.levels:
            assert store.done(lv.index).all()
            tissue = {tuple(rc) for rc in entry["tissue"][lv.index]}
            assert tissue, f"level {lv.index} has no tissue window"
            for w in plan.windows(lv.index):
                got = store.read(lv.index, (w.row * n, (w.row + 1) * n), (w.col * n, (w.col + 1) * n)).astype(np.float32)
                if (w.row, w.col) in tissue:
                    x = w.col * n * 8 * lv.mpp / slide.mpp.x
                    y = w.row * n * 8 * lv.mpp / slide.mpp.y
                    rgb = slide.read_region_mpp((round(x), round(y)), lv.mpp, (n * 8, n * 8))
                    want = vae.encode(rgb).numpy()
                else:
                    want = white
                np.testing.assert_allclose(got, want, atol=4e-3, rtol=2e-3)  # stored as float16


def test_rerun_resumes_and_repairs_an_interrupted_slide(prepared: Path, tmp_path: Path) -> None:
    from slide_io import WindowStore

    ds = tmp_path / "ds"
    shutil.copytree(prepared, ds)
    m = json.loads((ds / "manifest.json").read_text())
    entry = m["slides"][1]
    store = WindowStore.open(ds / entry["store"])
    before = store.read(0, (0, 24), (0, 40)).copy()
    # simulate a crash in the middle of this slide: rows 1-2 of windows lost, slide not finished
    store.write_window(0, 8, 0, np.zeros((16, 16, 40), np.float16))
    done = store._level(0)["done"]
    done[1:3, :] = False
    entry["status"] = "pending"
    (ds / "manifest.json").write_text(json.dumps(m))
    slides = Path(entry["path"]).parent
    assert main(prepare_args(slides, shared_file("reports/pathrepbench_tcga_reports_test.csv"), ds)) == 0
    store = WindowStore.open(ds / entry["store"], mode="r")
    np.testing.assert_array_equal(store.read(0, (0, 24), (0, 40)), before)
    assert store.done(0).all()
    assert json.loads((ds / "manifest.json").read_text())["slides"][1]["status"] == "done"


def test_match_csv_phi_refusal_and_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "slideA.svs").symlink_to(svs)
    (slides / "slideB.svs").symlink_to(svs)
    reports = tmp_path / "reports.csv"
    reports.write_text(
        "report_id,patient_id,text\n"
        "r1,p1,\"Skin, excision: basal cell carcinoma, nodular type. Margins are free of tumor.\"\n"
        "r2,p2,\"Patient John Smith, MRN 12345678, seen 03/14/2019. Skin: melanoma in situ.\"\n"
    )
    # no report named like the slides and no TCGA barcode
    assert main(prepare_args(slides, reports, tmp_path / "x")) == 2
    assert "2 slide(s) have no report: ['slideA', 'slideB']" in capsys.readouterr().err
    match = tmp_path / "match.csv"
    match.write_text("slide,report_id\nslideA.svs,r1\nslideB,r2\n")
    assert main(prepare_args(slides, reports, tmp_path / "ds", "--match", str(match))) == 0
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    a, b = m["slides"]
    assert (a["slide_id"], a["report_id"], a["status"], a["split"]) == ("slideA", "r1", "done", "train")
    assert b["status"] == "skipped" and "refused by the PHI policy" in b["reason"] and b["split"] == ""
    assert a["subtype"] == "carcinoma" and a["fields"]["stated_margins"] == "negative"  # stated in the text
    # a tiny random VAE only behind --random-init
    args = [x for x in prepare_args(slides, reports, tmp_path / "y", "--match", str(match)) if x != "--random-init"]
    assert main(args) == 2
    assert "no VAE: give --model or --vae (a tiny random VAE needs --random-init, tests only)" in capsys.readouterr().err


def test_grid_offsets_plan_shifted_copies_of_a_slide_whose_windows_hold_the_shifted_pixels(tmp_path: Path) -> None:
    """--grid-offsets 2: four entries of one patient; entry k's window (0, 0) encodes the slide from its origin."""
    from slide_io import WindowStore, open_slide
    from zwsi.vae import VAE

    reports = shared_file("reports/pathrepbench_tcga_reports_test.csv")
    slides = make_slides(tmp_path / "slides", PATIENTS[:1])
    assert main(prepare_args(slides, reports, tmp_path / "ds", "--grid-offsets", "2")) == 0
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    sid = f"{PATIENTS[0]}-01Z-00-DX1"
    assert [s["slide_id"] for s in m["slides"]] == [sid, f"{sid}_o1", f"{sid}_o2", f"{sid}_o3"]
    step = 4 * 2 * 8 * 4.0 / 2  # window 4 tokens x patch 2 x VAE 8 px x 4 µm/px, halved: 128 µm
    assert [s["origin_um"] for s in m["slides"]] == [[0.0, 0.0], [0.0, step], [step, 0.0], [step, step]]
    assert len({s["patient_id"] for s in m["slides"]}) == 1 and len({s["split"] for s in m["slides"]}) == 1
    o3 = m["slides"][3]
    assert o3["width_um"] == pytest.approx(2220 * 0.499 - step) and o3["height_um"] == pytest.approx(2967 * 0.499 - step)
    vae = VAE.from_folder(tmp_path / "ds" / "vae")
    store = WindowStore.open(tmp_path / "ds" / o3["store"], mode="r")
    n = 8  # window latents
    with open_slide(shared_file("wsi/CMU-1-Small-Region.svs")) as slide:
        row, col = o3["tissue"][0][0]
        x = (col * n * 8 * 4.0 + step) / slide.mpp.x
        y = (row * n * 8 * 4.0 + step) / slide.mpp.y
        want = vae.encode(slide.read_region_mpp((round(x), round(y)), 4.0, (n * 8, n * 8))).numpy()
    got = store.read(0, (row * n, (row + 1) * n), (col * n, (col + 1) * n)).astype(np.float32)
    np.testing.assert_allclose(got, want, atol=4e-3, rtol=2e-3)
    assert main(prepare_args(slides, reports, tmp_path / "bad", "--grid-offsets", "0")) == 2


@pytest.mark.slow  # three prepare runs (180 s on the shared 2-core machine)
def test_unreadable_slides_are_skipped_listed_and_summarised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    no_mpp = shared_file("wsi/tcga-cr-7395-01a-01-ts1.svs")  # a real TCGA export that stores no µm/px
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "slideA.svs").symlink_to(svs)
    (slides / "slideB.svs").write_bytes(svs.read_bytes()[:300_000])  # truncated
    (slides / "slideC.svs").symlink_to(no_mpp)
    reports = tmp_path / "reports.csv"
    reports.write_text("report_id,patient_id,text\n" + "".join(
        f"r{i},p{i},\"Skin, excision: basal cell carcinoma, nodular type. Margins are free of tumor.\"\n"
        for i in "ABC"))
    match = tmp_path / "match.csv"
    match.write_text("slide,report_id\nslideA,rA\nslideB,rB\nslideC,rC\n")
    out = tmp_path / "ds"
    assert main(prepare_args(slides, reports, out, "--match", str(match))) == 0
    err = capsys.readouterr().err
    assert f"zwsi prepare: 2 of 3 slide(s) could not be read and were skipped; see {out / 'prepare-errors.tsv'}" in err
    status = {s["slide_id"]: (s["status"], s["reason"]) for s in json.loads((out / "manifest.json").read_text())["slides"]}
    assert status["slideA"] == ("done", "")
    assert status["slideB"][0] == "skipped" and "SlideReadError: truncated" in status["slideB"][1]
    assert status["slideC"][0] == "skipped" and "MissingMppError" in status["slideC"][1]
    assert "--slide-mpp" in status["slideC"][1]  # the hint names a CLI flag
    lines = (out / "prepare-errors.tsv").read_text().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["slideB", "slideC"]
    # --on-error stop: the first unreadable slide stops the run with one line, exit 2
    only_b = tmp_path / "only_b"
    only_b.mkdir()
    (only_b / "slideB.svs").symlink_to(slides / "slideB.svs")
    assert main(prepare_args(only_b, reports, tmp_path / "stop", "--match", str(match), "--on-error", "stop")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("zwsi prepare: SlideReadError: truncated") and "Traceback" not in "".join(err)
    # --slide-mpp supplies the pixel size of slides that store none
    only_c = tmp_path / "only_c"
    only_c.mkdir()
    (only_c / "slideC.svs").symlink_to(no_mpp)
    assert main(prepare_args(only_c, reports, tmp_path / "mpp", "--match", str(match), "--slide-mpp", "2.0",
                             "--mpp", "8.0", "--coarsest-mpp", "32.0")) == 0
    entry, = json.loads((tmp_path / "mpp" / "manifest.json").read_text())["slides"]
    assert entry["status"] == "done" and entry["width_um"] == pytest.approx(4443 * 2.0)


def test_trained_levels_never_upsample_and_need_one_whole_window() -> None:
    """The built-in model's ladder (2 -> 0.5 µm/px, 256 px windows: 128 µm and 512 µm): CMU trains both rungs, a
    1 µm/px export only the 2 µm/px rung, a 250 µm crop at 0.227 µm/px only the 0.5 µm/px rung, a 100 µm crop none."""
    from zwsi.planner import PlanConfig
    from zwsi.train.prepare import plan_for, trained_levels

    config = PlanConfig(window_tokens=16, context_tokens=2, overview_margin=2, overlap_tokens=1)

    def levels(mpp: float, h: float, w: float) -> list[int]:
        return trained_levels(plan_for(h, w, 0.5, 2.0, config), mpp, h, w)

    assert levels(0.499, 1110, 1108) == [0, 1]
    assert levels(0.52, 1110, 1108) == [0, 1]  # within 5 %
    assert levels(0.53, 1110, 1108) == [1]
    assert levels(1.0, 3567, 4443) == [1]
    assert levels(0.227, 250, 250) == [0]
    assert levels(0.227, 511, 2000) == [0] and levels(0.227, 512, 2000) == [0, 1]
    assert levels(0.5, 100, 100) == []


def test_slides_train_only_resolved_and_spanned_rungs_which_alone_are_encoded(tmp_path: Path) -> None:
    """Test ladder 4 -> 16 µm/px, windows 256 and 1024 µm. A 300 µm crop of CMU trains the 4 µm/px rung only (its
    overview rung is still encoded); on a 0.25 -> 1 µm/px ladder CMU (0.499 µm/px) trains and encodes 1 µm/px only;
    the sampler draws nothing else; a slide that trains no rung is skipped with the figures in its reason."""
    from slide_io import WindowStore
    from zwsi.train.config import from_dict
    from zwsi.train.dataset import PreparedDataset
    from zwsi.train.samples import WindowSampler

    svs = shared_file("wsi/CMU-1-Small-Region.svs")
    slides = tmp_path / "slides"
    slides.mkdir()
    assert main(["slide", "convert", str(svs), str(slides / "crop.tif"), "--region", "600,800,601,601", "--no-progress"]) == 0
    assert main(["slide", "convert", str(svs), str(slides / "tiny.tif"), "--region", "600,800,200,200", "--no-progress"]) == 0
    reports = tmp_path / "reports.csv"
    reports.write_text("report_id,patient_id,text\n" + "".join(
        f"{s},p{s},\"Skin, excision: dermis with collagen bundles and small vessels.\"\n" for s in ("crop", "tiny")))
    match = tmp_path / "match.csv"
    match.write_text("slide,report_id\ncrop,crop\ntiny,tiny\n")
    assert main(prepare_args(slides, reports, tmp_path / "ds", "--match", str(match), "--splits", "1,0,0")) == 0
    entries = {s["slide_id"]: s for s in json.loads((tmp_path / "ds" / "manifest.json").read_text())["slides"]}
    crop, tiny = entries["crop"], entries["tiny"]
    assert crop["status"] == "done" and crop["train_levels"] == [0] and crop["tissue"][0]
    assert WindowStore.open(tmp_path / "ds" / crop["store"], mode="r").levels == [0, 1]
    assert tiny["status"] == "skipped" and tiny["reason"] == (
        "no rung to train: level 0 is 0.499 µm/px and the slide spans 100 x 100 µm; the ladder's rungs are 4, 16 "
        "µm/px with windows of 256, 1024 µm (a rung needs level 0 at most its µm/px and at least one window of it)")

    cmu = tmp_path / "cmu"
    cmu.mkdir()
    (cmu / "crop.svs").symlink_to(svs)
    geometry = ["--mpp", "0.25", "--coarsest-mpp", "1.0"]  # given after GEOMETRY's, so they win
    assert main(prepare_args(cmu, reports, tmp_path / "fine", "--match", str(match), "--splits", "1,0,0", *geometry)) == 0
    entry, = json.loads((tmp_path / "fine" / "manifest.json").read_text())["slides"]
    assert entry["status"] == "done" and entry["train_levels"] == [1] and entry["tissue"][0] == []
    assert WindowStore.open(tmp_path / "fine" / entry["store"], mode="r").levels == [1]
    cfg = from_dict({"model": {"preset": "tiny"}, "data": {"level_weights": [0.9, 0.1]}})
    for folder, level in ((tmp_path / "ds", 0), (tmp_path / "fine", 1)):
        sampler = WindowSampler(PreparedDataset(folder), "train", cfg.data, cfg.objective, seed=0)
        assert {sampler.draw(i).level for i in range(40)} == {level}
