"""The training plan a model carries: the window geometry and noise schedule it was trained with (DESIGN §3).

`zwsi train` writes ``RUN/zwsi_plan.json`` from the prepared dataset's manifest (window, strip, overlap and margin
tokens, level factor, ladder, patch size, VAE factor and channels) and the objective (shift, timestep distribution,
prediction); `zwsi train export` copies it into the model folder, and the model's scheduler config takes the same
shift and prediction. Generation reads it: a generation setting that disagrees is an error naming both values,
unless the config says ``plan_override: true`` (a deliberate change, warned about).

    plan = TrainingPlan.read("zwsi/default_model")
    plan.check(generate_config, patch_size=4, vae_factor=8, latent_channels=16)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PLAN_NAME = "zwsi_plan.json"
GEOMETRY = ("window_tokens", "context_tokens", "overlap_tokens", "overview_margin", "factor")
"""Plan fields a generation config states too (``GenerateConfig`` has each under the same name)."""


@dataclass(frozen=True)
class TrainingPlan:
    """What a model was trained with.

    Attributes:
        plan: `zwsi.planner.PlanConfig` fields (window, strip, overlap and margin tokens, factor, patch size, VAE
            factor, latent channels).
        final_mpp: µm/px of the finest rung trained; coarsest_mpp: the ladder's stop.
        objective: the noise schedule — ``timesteps``, ``shift``, ``loc``, ``scale``, ``prediction``.
    """

    plan: dict[str, int] = field(default_factory=dict)
    final_mpp: float = 0.5
    coarsest_mpp: float = 8.0
    objective: dict[str, Any] = field(default_factory=dict)

    @property
    def shift(self) -> float:
        return float(self.objective.get("shift", 3.0))

    @property
    def prediction(self) -> str:
        return str(self.objective.get("prediction", "velocity"))

    # ---- files ------------------------------------------------------------------------------------------------------
    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / PLAN_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True) + "\n")
        return path

    @classmethod
    def read(cls, folder: str | Path) -> TrainingPlan | None:
        """The plan in a model or run folder, or None when it has none (e.g. Z-Image's own hub folder).

        Raises:
            ValueError: the file is not a plan (names the file and the bad key).
        """
        path = Path(folder) / PLAN_NAME
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if not isinstance(data, dict) or unknown:
            raise ValueError(f"{path} is not a training plan: unknown keys {unknown}; expected {sorted(names)}")
        return cls(**data)

    # ---- checks -----------------------------------------------------------------------------------------------------
    def check(self, config: Any, *, patch_size: int, vae_factor: int, latent_channels: int) -> None:
        """Refuse a generation config or components that disagree with the plan.

        The transformer's patch size and the VAE's factor and channels must always match (other latents would be
        meaningless to the model). Geometry and shift may differ only under ``config.plan_override`` (warned).

        Raises:
            ValueError: naming each setting, its value and the plan's.
        """
        parts = {"patch_size": patch_size, "vae_factor": vae_factor, "latent_channels": latent_channels}
        bad = [f"{k} = {v} (the plan: {self.plan[k]})" for k, v in parts.items() if k in self.plan and self.plan[k] != v]
        if bad:
            raise ValueError(f"the model's components do not fit the plan it was trained with ({PLAN_NAME}): "
                             + "; ".join(bad))
        geometry = getattr(config, "plan", config)  # a GenerateConfig nests its window geometry under plan
        wanted = {k: getattr(geometry, k) for k in GEOMETRY if k in self.plan}
        wanted["coarsest_mpp"] = config.coarsest_mpp
        trained = {k: self.plan[k] for k in GEOMETRY if k in self.plan} | {"coarsest_mpp": self.coarsest_mpp}
        if config.shift is not None:
            wanted["shift"], trained["shift"] = config.shift, self.shift
        diff = [f"{k} = {wanted[k]} (trained with {trained[k]})" for k in wanted if wanted[k] != trained[k]]
        if not diff:
            return
        message = "the generation config disagrees with the model's training plan: " + "; ".join(diff)
        if not getattr(config, "plan_override", False):
            raise ValueError(f"{message}. Leave these settings to the model, or set plan_override: true to "
                             f"generate with another geometry on purpose")
        logger.warning("%s (plan_override: true)", message)

    def generate_settings(self) -> dict[str, Any]:
        """The generation-config settings the plan fixes (geometry, ladder stop)."""
        return {k: self.plan[k] for k in GEOMETRY if k in self.plan} | {"coarsest_mpp": self.coarsest_mpp}
