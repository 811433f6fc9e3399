"""S3DiT structure: checkpoint names/shapes at full size on the meta device, the exact parameter count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zwsi.model import S3DiT, S3DiTConfig

# The official Z-Image-Turbo transformer's 521 tensor names and shapes (a copy of
# ../shared/reference/zimage_turbo_state_dict_shapes.txt, committed so the test runs in a fresh clone).
SHAPES_FILE = Path(__file__).with_name("fixtures") / "zimage_turbo_state_dict_shapes.txt"


def _reference_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in SHAPES_FILE.read_text().splitlines():
        if line.strip():
            name, shape = line.split(None, 1)
            shapes[name] = tuple(int(v) for v in shape.strip().strip("[]").split(",") if v.strip())
    return shapes


@pytest.fixture(scope="module")
def turbo_on_meta() -> S3DiT:
    with torch.device("meta"):
        return S3DiT(S3DiTConfig.preset("z-image-turbo"))


def test_turbo_names_and_shapes_equal_the_checkpoint(turbo_on_meta):
    reference = _reference_shapes()
    ours = {name: tuple(t.shape) for name, t in turbo_on_meta.state_dict().items()}
    assert len(reference) == 521
    assert sorted(set(reference) - set(ours)) == [] and sorted(set(ours) - set(reference)) == []
    assert {n: s for n, s in ours.items() if s != reference[n]} == {}


def test_turbo_parameter_count_and_meta_build_allocates_nothing(turbo_on_meta):
    assert sum(p.numel() for p in turbo_on_meta.parameters()) == 6_154_908_736
    assert {t.device.type for t in turbo_on_meta.state_dict().values()} == {"meta"}
    assert turbo_on_meta.config.head_dim == 128


def test_tiny_model_has_no_buffers_and_loads_its_own_state_dict_strictly():
    model = S3DiT(S3DiTConfig.preset("tiny"))
    assert list(model.buffers()) == []
    clone = S3DiT(S3DiTConfig.preset("tiny"))
    clone.load_state_dict(model.state_dict(), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), clone.state_dict().values()))
