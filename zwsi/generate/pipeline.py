"""`SlideGenerator`: report text in, a pyramidal synthetic whole-slide TIFF out (DESIGN §3, §4).

The loop (one slide)::

    gen = SlideGenerator.from_pretrained("Z-Image-Turbo")              # hub folder, or "tiny" + random_init=True
    result = gen.generate(report, width_um=2000, height_um=1500, mpp=0.5, seed=7, out="slide.tiff")

1. The report goes through `reports.conditioning_text` (normalised, PHI policy — refuse by default —, truncation
   warned) and is encoded verbatim by the text encoder; there is no prompt enhancer.
2. `planner.plan_slide` lays out the magnification ladder; levels are generated coarsest first.
3. Per level: the coarsest level's windows are all generated; below it, only windows whose parent level shows
   tissue (`planner.tissue_windows` on `slide_io.banded_tissue_mask` of the parent's decoded pixels) — the others
   are filled with the blank-glass latents (`zwsi.background`) without a model call.
4. Per phase A..D (one barrier each): each process takes ``phase_batches(rank, world)`` and samples each batch
   (`zwsi.generate.windows.sample_windows`: the window's own seeded noise, the report, earlier-phase neighbour
   strips and the parent overview), then writes the latents into the shared latent `WindowStore` (marked done
   window by window).
5. The finished level is stream-decoded (`VAE.iter_decode`, one band of tiles in memory) into the pixel store;
   background windows are painted blank glass.
6. Level 0's pixels are written with `slide_io.write_pyramid` — atomically, marked SYNTHETIC, with provenance
   (report hash, seed, model and config hashes: `zwsi.generate.job.SlideJob`) — and the work folder is removed.

Around the loop: pipeline folders (`zwsi.generate.folder`), the request and the job's identity and work folder
(`zwsi.generate.job`), several processes (`zwsi.generate.distributed`).

Resuming: the stores live in ``<out>.work/`` and remember the job (report, seed, size, model, config). Running
the same job again skips every window already marked done, so a killed run ends with the same pixels as an
uninterrupted one. A level whose decoding was interrupted is decoded again from its top (no model calls).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zwsi.background import BACKGROUND_RGB, background_latents, glass_boxes, paint_glass
from zwsi.default_model import NAME as DEFAULT_MODEL_NAME
from zwsi.default_model import default_model_folder
from zwsi.generate.config import GenerateConfig
from zwsi.generate.distributed import ProcessGroup, StoreLock, process_group
from zwsi.generate.folder import (
    DEFAULT_SHIFT,
    PIPELINE_PRESETS,
    PipelineParts,
    folder_config,
    load_parts,
    resolve_config,
    save_parts,
    state_sha256,
    tiny_parts,
)
from zwsi.generate.glass import clean_glass
from zwsi.generate.job import LevelCounts, SlideJob, SlideRequest, check_output, open_work, region_cell
from zwsi.generate.windows import sample_windows
from zwsi.planner import PlanConfig, SlidePlan, Window, phase_batches, plan_slide, target_box, tissue_windows

if TYPE_CHECKING:
    import torch

    from reports import ConditioningText, ReportRecord
    from slide_io import Provenance, WindowStore

__all__ = ["BACKGROUND_RGB", "SlideGenerator", "SlideRequest", "SlideResult"]

logger = logging.getLogger(__name__)

WindowCallback = Callable[[Window], None]


@dataclass(frozen=True)
class SlideResult:
    """What `SlideGenerator.generate` did.

    Attributes:
        path: the TIFF (written by process 0).
        provenance: what the TIFF records.
        plan: the slide plan.
        conditioning: the exact conditioning text and its token count / cut.
        levels: per level, what it took (`LevelCounts`: model, background, resumed and tissue windows).
        seconds: wall time of this call.
    """

    path: Path
    provenance: Provenance
    plan: SlidePlan
    conditioning: ConditioningText
    levels: dict[int, LevelCounts]
    seconds: float

    @property
    def model_windows(self) -> dict[int, int]:
        """Per level, windows this process sampled with the model in this run."""
        return {k: c.model for k, c in self.levels.items()}

    @property
    def background_windows(self) -> dict[int, int]:
        """Per level, windows filled with background in this run (all processes)."""
        return {k: c.background for k, c in self.levels.items()}

    @property
    def resumed_windows(self) -> dict[int, int]:
        """Per level, windows found already done when the level started."""
        return {k: c.resumed for k, c in self.levels.items()}

    @property
    def tissue_windows(self) -> dict[int, int]:
        """Per level, windows the model generates over the whole job (all processes)."""
        return {k: c.tissue for k, c in self.levels.items()}


@dataclass
class _Run:
    """One slide being generated: what every level step reads and writes."""

    plan: SlidePlan
    request: SlideRequest  # resolved: steps and guidance set
    latents: WindowStore
    pixels: WindowStore
    regions: WindowStore | None  # each window's raw sampled target, with overlapping windows
    features: torch.Tensor  # (L, D) on the transformer's device and dtype
    group: ProcessGroup
    lock: StoreLock
    progress: bool
    on_window: WindowCallback | None
    levels: dict[int, LevelCounts] = field(default_factory=dict)
    tissue: dict[int, set[tuple[int, int]]] = field(default_factory=dict)  # per level, the windows the model samples


class SlideGenerator:
    """The generation pipeline: text encoder, S3-DiT, VAE and schedule, plus the generation config.

    Args:
        transformer: the S3-DiT (``forward(list[SequenceSample]) -> list[Tensor]``), on its device and dtype.
        vae: the `zwsi.vae.VAE` codec.
        text_encoder: a `zwsi.text.encoders.TextEncoder` whose feature width is the transformer's cap_feat_dim.
        config: generation settings; its plan gets the model's patch size and the VAE's factor and channels.
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
        self.text_encoder = text_encoder
        self.config = (config or GenerateConfig()).with_model(
            patch_size=int(transformer.config.patch_size), vae_factor=int(vae.spatial_factor),
            latent_channels=int(vae.latent_channels))
        self.shift = float(self.config.shift if self.config.shift is not None else shift)
        from zwsi.flow import PREDICTIONS

        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction = {prediction!r}; expected one of {list(PREDICTIONS)}")
        self.prediction = prediction
        self.name = name
        self._background_cache: dict[PlanConfig, np.ndarray] = {}
        mcfg = transformer.config
        if int(mcfg.cap_feat_dim) != int(text_encoder.feature_dim):
            raise ValueError(f"the text encoder gives {text_encoder.feature_dim}-wide features but the transformer "
                             f"expects cap_feat_dim = {mcfg.cap_feat_dim}")
        if int(mcfg.in_channels) != int(vae.latent_channels):
            raise ValueError(f"the VAE has {vae.latent_channels} latent channels but the transformer expects "
                             f"in_channels = {mcfg.in_channels}")
        self.model_sha256 = model_sha256 or state_sha256(transformer, vae.autoencoder)

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
        """Load a hub-layout folder (`zwsi.generate.folder`), or build the random ``tiny`` pipeline (tests and
        benchmarks only: `zwsi.generate.folder.tiny_parts`, the same weights for a seed everywhere).

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
            cfg = resolve_config(config, folder_config(path), overrides)
            return cls._of(load_parts(path, cfg), cfg)
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
        return cls.tiny(seed=seed, config=resolve_config(config, GenerateConfig.preset(name), overrides))

    @classmethod
    def tiny(cls, *, seed: int = 0, config: GenerateConfig | None = None) -> SlideGenerator:
        """The tiny random pipeline (see `from_pretrained`); reproducible from ``seed`` on any machine."""
        cfg = config or GenerateConfig.preset("tiny")
        return cls._of(tiny_parts(seed, cfg), cfg)

    @classmethod
    def _of(cls, parts: PipelineParts, cfg: GenerateConfig) -> SlideGenerator:
        return cls(parts.transformer, parts.vae, parts.text_encoder, config=cfg, shift=parts.shift,
                   prediction=parts.prediction, model_sha256=parts.model_sha256, name=parts.name)

    def save_pretrained(self, folder: str | Path, *, vae_dtype: torch.dtype | None = None,
                        transformer_dtype: torch.dtype | None = None) -> Path:
        """Write the hub layout `from_pretrained` reads back (`zwsi.generate.folder.save_parts`); an existing
        folder is an error. ``vae_dtype`` (e.g. torch.float16) stores the VAE weights in that dtype,
        ``transformer_dtype`` the transformer's (they compute in the config's dtype)."""
        parts = PipelineParts(self.transformer, self.vae, self.text_encoder, self.shift, self.model_sha256, self.name,
                              self.prediction)
        return save_parts(parts, self.config, folder, vae_dtype=vae_dtype, transformer_dtype=transformer_dtype)

    # ---- properties -----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def plan_config(self) -> PlanConfig:
        """The window geometry: the config's plan, with the model's patch size and the VAE's factor and channels."""
        return self.config.plan

    def plan(self, width_um: float, height_um: float, mpp: float, seed: int) -> SlidePlan:
        """The slide plan `generate` follows for this request."""
        return plan_slide(height_um, width_um, mpp, seed=seed, coarsest_mpp=self.config.coarsest_mpp,
                          config=self.plan_config)

    def conditioning(self, report: ReportRecord | str) -> ConditioningText:
        """The exact conditioning text of a report (`reports.conditioning_text` under the config's PHI policy)."""
        from reports import conditioning_text

        return conditioning_text(report, self.text_encoder, phi_policy=self.config.phi_policy)

    # ---- generation -------------------------------------------------------------------------------------------------
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
        """`generate_request` of ``SlideRequest(width_um, height_um, mpp, seed, steps, guidance)``."""
        request = SlideRequest(width_um, height_um, mpp, seed, steps, guidance)
        return self.generate_request(report, request, out, work_dir=work_dir, keep_work=keep_work, progress=progress,
                                     on_window=on_window)

    def generate_request(
        self,
        report: ReportRecord | str,
        request: SlideRequest,
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
            request: size, µm/px of the finest level, seed (every window's noise derives from it: the same slide
                for any batch size or process count), steps and guidance (default: the config's).
            out: the slide file (.svs/.tif/.tiff for the "svs" and "tiff" formats, .ome.tif for "ome-tiff"); it
                appears only when complete.
            work_dir: the latent/pixel stores (default ``<out>.work``); removed at the end unless ``keep_work``.
            keep_work: keep the stores (e.g. for validation of intermediate levels).
            progress: show per-level progress bars (process 0).
            on_window: called after each window this process writes (model-generated or background).

        Raises:
            reports.PhiFoundError: the report likely holds PHI and the policy is "refuse".
            ValueError: a bad output name (`slide_io.SlideFormatError`), or a work folder of another job.
        """
        from slide_io import write_pyramid

        start = time.perf_counter()
        cfg = self.config
        request, out = request.resolved(cfg), check_output(out, cfg.format)
        group = process_group("cpu" if self.device.type == "cpu" else None)
        cond = self.conditioning(report)
        plan = self.plan(request.width_um, request.height_um, request.mpp, request.seed)
        job = SlideJob.of(cond.text, request, cfg.settings(), self.shift, self.model_sha256)
        work = Path(work_dir) if work_dir is not None else out.parent / f"{out.name}.work"
        latents, pixels, regions, created = open_work(work, job, plan, cfg, group)
        run = _Run(plan, request, latents, pixels, regions, self._encode(cond.text), group,
                   StoreLock(work / "store.lock"), progress, on_window)
        for level in plan.generation_order():
            self._generate_level(run, level)
            if regions is not None and group.is_main:
                self._crossfade_level(run, level)
            if level > 0 or group.is_main:
                self._decode_level(run, level)
        provenance = job.provenance(report, cond, plan, created=created, model_name=self.name,
                                    phi_policy=cfg.phi_policy)
        if group.is_main:
            write_pyramid(out, pixels.pixel_source(0), mpp=float(request.mpp),
                          compression=cfg.compression,  # type: ignore[arg-type]  # one of COMPRESSIONS, checked
                          quality=cfg.quality, tile_size=cfg.tile_size, provenance=provenance, progress=progress,
                          format=cfg.format)  # type: ignore[arg-type]  # one of FORMATS, checked
            if not keep_work:
                shutil.rmtree(work, ignore_errors=True)
        return SlideResult(out, provenance, plan, cond, run.levels, time.perf_counter() - start)

    # ---- the steps --------------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> torch.Tensor:
        import torch

        with torch.inference_mode():
            features = self.text_encoder.encode([text])[0]  # (L, D)
        return features.to(self.device, self.dtype)

    def _generate_level(self, run: _Run, level: int) -> None:
        """Fill the level's background windows, then sample its tissue windows phase by phase."""
        plan, group = run.plan, run.group
        done = run.latents.done(level)  # (rows, cols): one cell per window
        group.barrier()  # every process has the same snapshot before anyone writes this level
        todo = self._tissue_windows(run, level)
        tissue = run.tissue[level] = {(w.row, w.col) for w in todo}
        background = [w for w in plan.windows(level) if (w.row, w.col) not in tissue and not done[w.row, w.col]]
        counts = run.levels[level] = LevelCounts(tissue=len(todo), resumed=int(done.sum()), background=len(background))
        if background:
            n, fill = plan.config.window_latents, self._background(plan.config)  # (C, n, n)
            for w in background[group.rank :: group.world_size]:
                self._write(run, w, n, fill)
        pending = [w for w in todo if not done[w.row, w.col]]
        counts.model = self._sample_level(run, level, todo, pending)

    def _tissue_windows(self, run: _Run, level: int) -> list[Window]:
        """The windows the model generates: all at the coarsest level (or without tissue checks), else those whose
        parent level shows tissue."""
        from slide_io import banded_tissue_mask

        plan, cfg = run.plan, self.config
        if level == plan.coarsest or not cfg.tissue:
            return plan.windows(level)
        parent = plan.level(level + 1)
        h, w = parent.slide_pixels
        mask, mask_mpp = banded_tissue_mask(lambda y0, y1: run.pixels.read(parent.index, (y0, y1), (0, w)),
                                            (h, w), parent.mpp, cfg.tissue_mpp)
        return tissue_windows(plan, level, mask, mask_mpp, min_fraction=cfg.min_tissue_fraction)

    def _write(self, run: _Run, window: Window, n: int, latents: np.ndarray) -> None:
        with run.lock():
            run.latents.write_window(window.level, window.row * n, window.col * n, latents)
        if run.on_window is not None:
            run.on_window(window)

    def _write_target(self, run: _Run, window: Window, target: np.ndarray) -> None:
        """Write a sampled target: whole into the region store (with overlap; first, so a window counts as done
        only once both are written), its window into the latents."""
        cfg = run.plan.config
        (r0, _), (c0, _) = target_box(run.plan, window)
        (wr0, wr1), (wc0, wc1) = window.latent_box(cfg)
        if run.regions is not None:
            o, cell = cfg.overlap_tokens * cfg.patch_size, region_cell(cfg)
            with run.lock():
                run.regions.write_window(window.level, window.row * cell + r0 - (wr0 - o),
                                         window.col * cell + c0 - (wc0 - o), target)
        self._write(run, window, cfg.window_latents, target[:, wr0 - r0 : wr1 - r0, wc0 - c0 : wc1 - c0])

    def _crossfade_level(self, run: _Run, level: int) -> None:
        """Blend each known window's border toward what later windows made of it (`zwsi.generate.overlap`); reads
        only raw outputs, so a resumed run blends the same. Process 0, after every window of the level is written."""
        from zwsi.generate.overlap import crossfade_level

        latents, regions, tissue = run.latents, run.regions, run.tissue[level]
        if regions is None or level in latents.attrs.get("crossfaded_levels", []):
            return
        cfg = run.plan.config
        o, cell = cfg.overlap_tokens * cfg.patch_size, region_cell(cfg)
        fill = self._background(cfg)  # (C, n, n)

        def read_raw(w: Window, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
            if (w.row, w.col) not in tissue:
                return fill[:, : rows[1] - rows[0], : cols[1] - cols[0]]
            (wr0, _), (wc0, _) = w.latent_box(cfg)
            r0, c0 = w.row * cell + rows[0] - (wr0 - o), w.col * cell + cols[0] - (wc0 - o)
            return regions.read(level, (r0, r0 + rows[1] - rows[0]), (c0, c0 + cols[1] - cols[0]))

        crossfade_level(run.plan, level, generated=lambda r, c: (r, c) in tissue,
                        background=lambda r, c: (r, c) not in tissue, read_raw=read_raw,
                        write=lambda r0, c0, z: latents.write_window(level, r0, c0, z))
        latents.update_attrs(crossfaded_levels=sorted({*latents.attrs.get("crossfaded_levels", []), level}))

    def _sample_level(self, run: _Run, level: int, todo: list[Window], pending: list[Window]) -> int:
        """Sample the pending tissue windows phase by phase (a barrier after each); returns how many this process did."""
        from tqdm.auto import tqdm

        from zwsi.sampling import flow_sigmas

        plan, group, cfg, req = run.plan, run.group, self.config, run.request
        info = plan.level(level)
        bar = tqdm(total=len(todo), initial=len(todo) - len(pending), unit="window", leave=True,
                   desc=f"level {level} ({info.mpp:g} µm/px)", disable=not (run.progress and group.is_main))
        if group.world_size > 1:
            bar.set_description(f"level {level} ({info.mpp:g} µm/px, process 0 of {group.world_size})")
        bar.set_postfix(background=len(plan.windows(level)) - len(todo))
        generated = 0
        sigmas = flow_sigmas(int(req.steps or cfg.steps), self.shift)
        for phase in range(4):
            for batch in phase_batches([w for w in pending if w.phase == phase], cfg.batch_size,
                                       rank=group.rank, world_size=group.world_size):
                out = sample_windows(self.transformer, plan, batch, run.latents.read, run.features, sigmas=sigmas,
                                     guidance=float(req.guidance or 0.0), cfg_truncation=cfg.cfg_truncation,
                                     cfg_normalization=cfg.cfg_normalization, prediction=self.prediction,
                                     background=lambda r, c: (r, c) not in run.tissue[level])
                for w, z in zip(batch, out):
                    self._write_target(run, w, z)
                    generated += 1
                bar.update(len(batch))
            group.barrier()  # the next phase reads this phase's windows
        bar.n = len(todo)
        bar.close()
        return generated

    def _decode_level(self, run: _Run, level: int) -> None:
        """Stream-decode a finished level into the pixel store (process 0; the others wait unless it is level 0)."""
        from tqdm.auto import tqdm

        from zwsi.vae import tile_spans

        plan, pixels, group = run.plan, run.pixels, run.group
        decoded = list(pixels.attrs.get("decoded_levels", []))
        if group.is_main and level not in decoded:
            cfg, info = self.config, plan.level(level)
            h, w = info.slide_pixels
            pixels.create_level(level, (h, w), mpp=info.mpp, grid=(h, w))
            # background windows are blank glass, whatever the VAE makes of their uniform latents
            glass = glass_boxes(plan, level, run.latents.read, self._background(plan.config)) if cfg.paint_glass else []
            bands = self.vae.iter_decode(lambda r, c: run.latents.read(level, r, c), info.latent_shape,
                                         tile=cfg.vae_tile, overlap=cfg.vae_overlap)
            total = len(tile_spans(info.latent_shape[0], cfg.vae_tile, cfg.vae_overlap))
            for y0, band in tqdm(bands, total=total, desc=f"decode level {level}", unit="band",
                                 disable=not run.progress, leave=False):
                if y0 < h:
                    band = np.ascontiguousarray(band[: h - y0, :w])  # (rows, w, 3) uint8
                    if cfg.glass_cleanup:
                        band = clean_glass(band, BACKGROUND_RGB)
                    pixels.write_window(level, y0, 0, paint_glass(band, y0, glass))
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
