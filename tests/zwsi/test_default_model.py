"""The built-in default model (zwsi/default_model): ships whole and small, loads without --model, makes H&E tissue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from slide_io import detect_tissue, open_slide, read_provenance
from zwsi.cli import main
from zwsi.default_model import FOLDER, default_model_folder
from zwsi.generate.pipeline import SlideGenerator

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/zwsi/conftest.py

REPORT = Path(__file__).resolve().parents[2] / "examples" / "report_skin_example.txt"
SLIDE = FOLDER / "slide" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def default(one_thread: None) -> SlideGenerator:
    return SlideGenerator.from_pretrained()


def test_ships_every_part_within_25_mb_with_a_model_card() -> None:
    folder = default_model_folder()
    weights = sorted(folder.rglob("*.safetensors"))
    assert [p.relative_to(folder).as_posix() for p in weights] == [
        "transformer/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]
    assert sum(p.stat().st_size for p in weights) <= 25_000_000
    card = (folder / "MODEL_CARD.md").read_text()
    assert "not a clinical model" in card and "configs/default_model/build.sh" in card
    ref = json.loads((folder / "text_encoder" / "zwsi_text_encoder.json").read_text())
    assert ref["backend"] == "hf" and ref["path"] is None  # the installed offline MiniLM, not a copy
    assert SLIDE.is_file() and SLIDE.stat().st_size == 1_938_955  # the CC0 training slide, bundled for validation


def test_loads_without_a_name_as_the_zwsi_small_pipeline(default: SlideGenerator) -> None:
    """v2: zwsi-small at patch 2 on TAEF1, shift 1 and x-prediction as trained, the plan carried by the folder."""
    import dataclasses

    from zwsi.model import S3DiTConfig
    from zwsi.training_plan import TrainingPlan

    assert default.transformer.config == dataclasses.replace(S3DiTConfig.preset("zwsi-small"), all_patch_size=(2,))
    assert sum(p.numel() for p in default.transformer.parameters()) == 1_990_336
    assert default.vae.tiny and (default.vae.latent_channels, default.vae.spatial_factor) == (16, 8)  # TAEF1
    assert (default.vae.scaling_factor, default.vae.shift_factor) == (0.831273, 0.099421)  # measured on H&E
    assert default.text_encoder.feature_dim == 384 and default.shift == 1.0
    cfg = default.config
    assert (cfg.plan.window_tokens, cfg.plan.context_tokens, cfg.plan.overlap_tokens, cfg.vae_tile, cfg.steps,
            cfg.dtype, cfg.tissue) == (16, 2, 1, 32, 8, "fp32", False)
    assert (cfg.plan.patch_size, cfg.plan.vae_factor, cfg.plan.latent_channels) == (2, 8, 16)  # the model's own
    plan = TrainingPlan.read(FOLDER)
    assert plan is not None and (plan.shift, plan.prediction, plan.plan["patch_size"]) == (1.0, "sample", 2)
    assert (plan.final_mpp, plan.coarsest_mpp) == (0.5, 2.0)
    assert (FOLDER / "vae" / "LICENSE-TAEF1").read_text().startswith("MIT License")  # TAEF1's licence travels with it
    assert SlideGenerator.from_pretrained("default").model_sha256 == default.model_sha256
    with pytest.raises(ValueError, match="the built-in default model has trained weights"):
        SlideGenerator.from_pretrained(random_init=True)


def test_generates_tissue_coloured_like_the_training_slide(default: SlideGenerator, tmp_path: Path) -> None:
    """A 1,024 µm square at 0.5 µm/px (the model's finest level): tissue where the layout put it, its mean colour
    near the real H&E's (at 2 µm/px as the finest level the model makes pale lilac: it only learned 0.5 µm/px there)."""
    result = default.generate(REPORT.read_text(), 1024, 1024, 0.5, seed=0, out=tmp_path / "s.tiff", progress=False)
    assert sum(result.model_windows.values()) > 0
    with open_slide(tmp_path / "s.tiff") as synth, open_slide(SLIDE) as real:
        assert synth.dimensions == (2048, 2048) and synth.is_synthetic
        fake = synth.read_region_mpp((0, 0), 2.0, (512, 512))
        fake_mask = detect_tissue(synth, mpp=8.0)
        true = real.read_region_mpp((0, 0), 2.0, (int(2220 * 0.499 / 2), int(2967 * 0.499 / 2)))
        true_mask = detect_tissue(real, mpp=8.0)
    assert 0.05 < fake_mask.fraction < 0.95, f"tissue fraction {fake_mask.fraction}"

    def tissue_mean(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        up = np.kron(mask, np.ones((4, 4), bool))[: rgb.shape[0], : rgb.shape[1]]
        return rgb[: up.shape[0], : up.shape[1]][up].reshape(-1, 3).mean(0)

    fake_mean, true_mean = tissue_mean(fake, fake_mask.mask), tissue_mean(true, true_mask.mask)
    assert np.abs(fake_mean - true_mean).max() < 25, (fake_mean, true_mean)  # pink-purple H&E, not grey or noise
    assert fake_mean[0] > fake_mean[1] + 20 and fake_mean[2] > fake_mean[1] + 20  # eosin/haematoxylin over green


def test_cli_uses_the_default_model_without_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d.tiff"
    code = main(["generate", "--report", str(REPORT), "--out", str(out), "--width-um", "256", "--height-um", "256",
                 "--mpp", "2", "--seed", "1", "--steps", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    prov = read_provenance(out)
    assert prov is not None and prov.extra["model"] == "default_model" and prov.extra["request"]["steps"] == 2


def test_export_bundles_a_pipeline_folder_that_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`zwsi train export`: transformer + VAE (stored fp16) + MiniLM reference + generation settings."""
    from safetensors.torch import load_file

    from zwsi.model import S3DiT, S3DiTConfig
    from zwsi.model.checkpoint import save_pretrained

    torch.manual_seed(0)
    model = S3DiT(S3DiTConfig.preset("zwsi-small"))
    save_pretrained(model, tmp_path / "transformer")
    argv = ["train", "export", "--transformer", str(tmp_path / "transformer"), "--vae", str(FOLDER / "vae"),
            "--generate-config", "configs/generate/zwsi-small.yaml", "--shift", "2.5", "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    assert "zwsi train export: wrote" in capsys.readouterr().out
    gen = SlideGenerator.from_pretrained(tmp_path / "m")
    assert gen.shift == 2.5 and gen.config.plan.window_tokens == 16
    for name, p in gen.transformer.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    stored = load_file(tmp_path / "m" / "vae" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    assert main(argv) == 2  # the folder exists now: refused, nothing overwritten
    assert "exists" in capsys.readouterr().err


def test_build_inputs_every_training_slide_has_its_description_and_no_description_carries_phi() -> None:
    """configs/default_model: the match table names only reports of reports/, each source keeps its orientations
    (CMU 8, OS-1 and the frozen section 2 each, the shares build.sh documents), and every description passes the
    PHI screen that `zwsi prepare` applies."""
    import csv

    from reports import load_reports
    from reports.phi import find_phi

    root = Path(__file__).resolve().parents[2] / "configs" / "default_model"
    records = {r.id: r for r in load_reports(root / "reports")}
    assert sorted(records) == ["CMU-1-Small-Region", "OS-1-detail", "TCGA-CR-7395-frozen"]
    rows = list(csv.DictReader((root / "train-slides.csv").open()))
    per_report: dict[str, list[str]] = {}
    for row in rows:
        assert row["report_id"] in records, row
        assert row["slide"].startswith(row["report_id"] + "-d"), row
        per_report.setdefault(row["report_id"], []).append(row["slide"].rsplit("-d", 1)[1])
    assert {k: sorted(v) for k, v in per_report.items()} == {
        "CMU-1-Small-Region": list("01234567"), "OS-1-detail": ["0", "5"], "TCGA-CR-7395-frozen": ["0", "5"]}
    build = (root / "build.sh").read_text()
    assert "for k in 0 1 2 3 4 5 6 7; do" in build and "for k in 0 5; do" in build
    for r in records.values():
        assert find_phi(r.text) == [], r.id


def test_build_stops_before_any_work_when_a_training_slide_is_missing(tmp_path: Path) -> None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    run = tmp_path / "run"
    done = subprocess.run(["bash", "configs/default_model/build.sh"], cwd=root, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "RUN": str(run), "DATA": str(tmp_path / "none"), "ZWSI": "false"},
                          timeout=60)
    assert done.returncode == 2 and not run.exists()
    assert done.stderr.startswith(f"build.sh: training slide {tmp_path / 'none'}/wsi/OS-1-detail.ome.tif not found: "
                                  "set DATA to the project's shared data folder")
