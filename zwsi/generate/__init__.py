"""Slide generation: `SlideGenerator` (report -> pyramidal synthetic WSI), its config, processes and cohorts.

    from zwsi.generate import SlideGenerator
    gen = SlideGenerator.from_pretrained("Z-Image-Turbo")         # a hub folder; "tiny" + random_init=True for tests
    gen.generate(report, width_um=2000, height_um=1500, mpp=0.5, seed=7, out="slide.tiff")

Torch is imported by the submodules that need it (`pipeline`), not here.
"""

from __future__ import annotations

from zwsi.generate.config import GenerateConfig, load_generate_config

__all__ = ["GenerateConfig", "SlideGenerator", "SlideResult", "generate_cohort", "load_generate_config"]


def __getattr__(name: str) -> object:
    if name in ("SlideGenerator", "SlideResult"):
        from zwsi.generate import pipeline

        return getattr(pipeline, name)
    if name == "generate_cohort":
        from zwsi.generate import cohort

        return cohort.generate_cohort
    raise AttributeError(f"module 'zwsi.generate' has no attribute {name!r}")
