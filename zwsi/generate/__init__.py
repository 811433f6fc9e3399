"""Slide generation: `SlideGenerator` (report -> pyramidal synthetic WSI), its config, processes and cohorts.

    from zwsi.generate import SlideGenerator
    gen = SlideGenerator.from_pretrained("Z-Image-Turbo")         # a hub folder; "tiny" + random_init=True for tests
    gen.generate(report, width_um=2000, height_um=1500, mpp=0.5, seed=7, out="slide.tiff")

| module | what it holds |
|---|---|
| `pipeline` | `SlideGenerator`: the level loop (tissue windows, phases, decoding, the TIFF) |
| `windows` | building and sampling one batch of windows |
| `job` | `SlideRequest` (shared by `zwsi generate` and `generate-cohort`), the job's identity and work folder |
| `folder` | pipeline folders: loading, saving, the model's identity, the tiny random pipeline |
| `config` | `GenerateConfig` (the plan's geometry nested), presets, YAML |
| `distributed` | several processes on one slide: the process group and the store lock |
| `glass` | pale-glass clean-up of decoded pixels |
| `cohort` | K slides per selected report, with a manifest |

Torch is imported by the submodules that need it (`pipeline`, `windows`), not here.
"""

from __future__ import annotations

from zwsi.generate.config import GenerateConfig, load_generate_config
from zwsi.generate.job import SlideRequest

__all__ = ["GenerateConfig", "SlideGenerator", "SlideRequest", "SlideResult", "generate_cohort",
           "load_generate_config"]


def __getattr__(name: str) -> object:
    if name in ("SlideGenerator", "SlideResult"):
        from zwsi.generate import pipeline

        return getattr(pipeline, name)
    if name == "generate_cohort":
        from zwsi.generate import cohort

        return cohort.generate_cohort
    raise AttributeError(f"module 'zwsi.generate' has no attribute {name!r}")
