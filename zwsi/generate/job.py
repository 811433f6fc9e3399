"""One slide job: the request, its identity (the hashes the work folder and the provenance record), its work folder,
and what each level did.

    request = SlideRequest(width_um=2000, height_um=1500, mpp=0.5, seed=7)      # shared by generate and cohorts
    job = SlideJob.of(conditioning_text, request.resolved(config), config.settings(), shift, model_sha256)
    latents, pixels, created = open_work(work_folder, job, plan, config, group)  # created, or reopened to resume

Resuming rests on the identity: the stores of ``<out>.work/`` remember the job (report, seed, model and config
hashes), and a run of the same job continues them; another job's work folder is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reports import ConditioningText
    from slide_io import Provenance, WindowStore
    from zwsi.generate.config import GenerateConfig
    from zwsi.generate.distributed import ProcessGroup
    from zwsi.planner import PlanConfig, SlidePlan

@dataclass(frozen=True)
class SlideRequest:
    """What a user asks for: the slide's size and finest µm/px, its seed, and optionally steps and guidance.

    Attributes:
        width_um: slide width in µm.
        height_um: slide height in µm.
        mpp: µm/px of the finest level (the TIFF's level 0).
        seed: the slide seed; every window's noise derives from it.
        steps: sampling steps (None: the generation config's).
        guidance: CFG scale (None: the generation config's).

    Raises:
        ValueError: a size or µm/px that is not a positive number, a seed outside [0, 2**63), steps < 1 or a
            negative guidance (the value is named).
    """

    width_um: float
    height_um: float
    mpp: float
    seed: int
    steps: int | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        for name in ("width_um", "height_um", "mpp"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.guidance is not None and not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")

    def resolved(self, config: GenerateConfig) -> SlideRequest:
        """This request with steps and guidance filled in from ``config`` where they are None."""
        steps = config.steps if self.steps is None else int(self.steps)
        guidance = config.guidance if self.guidance is None else float(self.guidance)
        return dataclasses.replace(self, steps=steps, guidance=guidance)

    def with_seed(self, seed: int) -> SlideRequest:
        return dataclasses.replace(self, seed=seed)


def check_output(out: str | Path, slide_format: str = "svs") -> Path:
    """The output path of a slide, whose name must fit the container (`slide_io.formats.SUFFIXES`).

    Raises:
        slide_io.SlideFormatError: an unknown format, or another ending (a ValueError).
    """
    from slide_io.formats import check_suffix

    out = Path(out)
    check_suffix(out, slide_format)
    return out


@dataclass
class LevelCounts:
    """What one level of a slide took.

    Attributes:
        model: windows this process sampled with the model in this run.
        background: windows filled with background in this run (all processes).
        resumed: windows found already done when the level started.
        tissue: windows the model generates over the whole job (all processes).
    """

    model: int = 0
    background: int = 0
    resumed: int = 0
    tissue: int = 0


@dataclass(frozen=True)
class SlideJob:
    """The identity of one slide: what the work folder checks and the provenance records.

    Attributes:
        report_sha256: SHA-256 of the exact conditioning text.
        seed: the slide seed.
        model_sha256: the model's identity.
        config_sha256: SHA-256 of the settings that change a slide and of the request.
        request: the request as recorded (size, µm/px, steps, guidance, the schedule shift).
        settings: the generation settings that change a slide (`GenerateConfig.settings`).
    """

    report_sha256: str
    seed: int
    model_sha256: str
    config_sha256: str
    request: dict[str, Any]
    settings: dict[str, Any]

    @classmethod
    def of(cls, text: str, request: SlideRequest, settings: dict[str, Any], shift: float,
           model_sha256: str) -> SlideJob:
        """The job of a resolved request (`SlideRequest.resolved`) for a conditioning text."""
        from slide_io import sha256_text

        recorded = {"width_um": float(request.width_um), "height_um": float(request.height_um),
                    "mpp": float(request.mpp), "steps": request.steps, "guidance": request.guidance, "shift": shift}
        config_sha = hashlib.sha256(json.dumps({"config": settings, "request": recorded},
                                               sort_keys=True).encode()).hexdigest()
        return cls(sha256_text(text), int(request.seed), model_sha256, config_sha, recorded, settings)

    def key(self) -> dict[str, Any]:
        """What the work folder's stores remember, to be resumed only by the same job."""
        return {"report_sha256": self.report_sha256, "seed": self.seed, "model_sha256": self.model_sha256,
                "config_sha256": self.config_sha256}

    def provenance(self, report: Any, cond: ConditioningText, plan: SlidePlan, *, created: str, model_name: str,
                   phi_policy: str) -> Provenance:
        """What the TIFF records: SYNTHETIC, the hashes, and how the slide was made."""
        from slide_io import Provenance, sha256_text

        return Provenance(
            synthetic=True, report_sha256=self.report_sha256, seed=self.seed, model_sha256=self.model_sha256,
            config_sha256=self.config_sha256, created=created,
            extra={
                "report_id": getattr(report, "id", "text"),
                "report_text_sha256": getattr(report, "text_sha256", None) or sha256_text(str(report)),
                # the screened text the model saw (redacted under "redact"); not copied under "allow", which skips
                # the PHI screen
                "conditioning": {"encoder": cond.encoder, "n_tokens": cond.n_tokens, "truncated": cond.truncated,
                                 "phi_policy": phi_policy} | ({} if phi_policy == "allow" else {"text": cond.text}),
                "model": model_name, "request": self.request,
                "ladder_mpp": [lv.mpp for lv in plan.levels],
                "plan": dataclasses.asdict(plan.config),  # window geometry: `zwsi validate` checks every border
                "generate_config": self.settings,
            },
        )


def open_work(work: Path, job: SlideJob, plan: SlidePlan, cfg: GenerateConfig,
              group: ProcessGroup) -> tuple[WindowStore, WindowStore, WindowStore | None, str]:
    """Create (process 0) or reopen the work folder's latent and pixel stores and, with overlapping windows, the
    region store of each window's raw sampled target (`zwsi.generate.overlap`); every process checks they belong to
    this job. Returns (latents, pixels, regions or None, creation time).

    Raises:
        ValueError: the work folder belongs to another job (the differing hashes are named).
    """
    from datetime import datetime, timezone

    from slide_io import WindowStore

    key = job.key()
    lat_path, pix_path = work / "latents.zarr", work / "pixels.zarr"
    if group.is_main and not (lat_path / "zarr.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(pix_path, ignore_errors=True)
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp = work / ".latents.zarr.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        store = WindowStore.create(tmp, "latent", channels=plan.config.latent_channels, dtype=cfg.latent_dtype,
                                   attrs={"job": key, "created": created})
        n = plan.config.window_latents
        for lv in plan.levels:
            store.create_level(lv.index, lv.latent_shape, mpp=lv.mpp * plan.config.vae_factor, grid=(n, n),
                               attrs={"pixel_mpp": lv.mpp})
        tmp.rename(lat_path)  # the store appears whole, so a store without levels never exists
    if group.is_main and not (pix_path / "zarr.json").is_file():
        WindowStore.create(pix_path, "pixel", attrs={"job": key}, overwrite=True)
    reg_path = work / "regions.zarr"
    if group.is_main and plan.config.overlap_tokens and not (reg_path / "zarr.json").is_file():
        tmp = work / ".regions.zarr.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        fresh = WindowStore.create(tmp, "latent", channels=plan.config.latent_channels, dtype=cfg.latent_dtype,
                                     attrs={"job": key})
        r = region_cell(plan.config)
        for lv in plan.levels:
            rows, cols = lv.grid
            fresh.create_level(lv.index, (rows * r, cols * r), mpp=lv.mpp * plan.config.vae_factor, grid=(r, r),
                                 chunks=(r, r))
        tmp.rename(reg_path)
    group.barrier()
    latents = WindowStore.open(lat_path)
    theirs = latents.attrs.get("job")
    if theirs != key:
        diff = sorted(k for k in key if (theirs or {}).get(k) != key[k])
        raise ValueError(f"work folder {work} belongs to another job (differs in {diff}); remove it or choose "
                         f"another output name")
    regions = WindowStore.open(reg_path) if plan.config.overlap_tokens else None
    return latents, WindowStore.open(pix_path), regions, str(latents.attrs["created"])


def region_cell(config: PlanConfig) -> int:
    """Side in latents of a window's cell in the region store: the window plus its overlap on both sides."""
    return config.window_latents + 2 * config.overlap_tokens * config.patch_size
