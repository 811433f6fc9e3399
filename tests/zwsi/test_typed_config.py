"""The one config loader: unknown keys and wrong types name the key, the value, the type and the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from zwsi.typed_config import from_mapping, load_config, merge, read_yaml


@dataclass(frozen=True)
class Inner:
    size: int = 4
    weights: tuple[float, ...] = (1.0,)
    span: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"inner.size must be >= 1, got {self.size}")


@dataclass(frozen=True)
class Outer:
    name: str = "run"
    on: bool = True
    lr: float = 1.0
    limit: int | None = None
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_defaults_nested_sections_and_conversions() -> None:
    cfg = from_mapping(Outer, {"lr": 2, "inner": {"weights": [1, 0.5], "span": [0.25, 1]}, "tags": ["a"]})
    assert cfg == Outer(lr=2.0, tags=["a"], inner=Inner(weights=(1.0, 0.5), span=(0.25, 1.0)))
    assert isinstance(cfg.lr, float) and isinstance(cfg.inner.weights, tuple)
    base = Outer(name="base", inner=Inner(size=9))
    assert from_mapping(Outer, {"inner": {"weights": [2.0]}}, base=base) == Outer(name="base", inner=Inner(9, (2.0,)))
    assert from_mapping(Outer, {"limit": None}).limit is None and from_mapping(Outer, {"limit": 3}).limit == 3


@pytest.mark.parametrize(("data", "message"), [
    ({"on": "no"}, r"x.yaml: on must be true or false, got 'no' \(str\)"),
    ({"on": 1}, r"x.yaml: on must be true or false, got 1 \(int\)"),
    ({"lr": "8"}, r"x.yaml: lr must be a number, got '8' \(str\)"),
    ({"lr": True}, r"x.yaml: lr must be a number, got True \(bool\)"),
    ({"limit": 4.0}, r"x.yaml: limit must be an integer or null, got 4.0 \(float\)"),
    ({"inner": {"size": "4"}}, r"x.yaml: inner.size must be an integer, got '4' \(str\)"),
    ({"inner": {"span": [0.0]}}, r"x.yaml: inner.span must be a list of 2 \(a number, a number\), got \[0.0\]"),
    ({"inner": {"weights": 1.0}}, r"x.yaml: inner.weights must be a list of numbers, got 1.0 \(float\)"),
    ({"tags": [1]}, r"x.yaml: tags\[0\] must be a string, got 1 \(int\)"),
    ({"inner": 3}, r"x.yaml: inner must be a mapping, got int 3"),
    ({"inner": {"sise": 3}}, r"x.yaml: unknown config key\(s\) \['inner.sise'\]; valid keys at inner are \['size', "),
    ({"nme": "x"}, r"x.yaml: unknown config key\(s\) \['nme'\]; valid keys at top level are \['name', "),
    ({"inner": {"size": 0}}, r"inner.size must be >= 1, got 0"),  # the dataclass's own range check
])
def test_errors_name_key_value_type_and_file(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_mapping(Outer, data, where="x.yaml")


def test_yaml_files_overrides_and_yaml_1_2_floats(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nname: 1e3x\ninner: {size: 2, weights: [5E+2, -2.5e-1]}\n")
    cfg = load_config(Outer, path, overrides={"inner": {"size": 3}})
    assert cfg.lr == 1e-4 and cfg.name == "1e3x" and cfg.inner == Inner(size=3, weights=(500.0, -0.25))
    assert read_yaml(tmp_path / "c.yaml")["lr"] == 1e-4
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(Outer, tmp_path / "empty.yaml") == Outer()
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="list.yaml must hold a mapping at the top level, got list"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1\n")
    with pytest.raises(ValueError, match="bad.yaml is not valid YAML") as bad:
        read_yaml(tmp_path / "bad.yaml")
    assert "\n" not in str(bad.value)  # one line for the CLI's error line
    with pytest.raises(FileNotFoundError, match="training config .*missing.yaml does not exist"):
        read_yaml(tmp_path / "missing.yaml", "training config")
    (tmp_path / "typo.yaml").write_text("inner: {sise: 3}\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown config key\(s\) \['inner.sise'\]"):
        load_config(Outer, tmp_path / "typo.yaml")


def test_merge_is_nested_and_leaves_its_inputs() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": 3}
    assert merge(base, {"a": {"b": 5}, "e": 6}) == {"a": {"b": 5, "c": 2}, "d": 3, "e": 6}
    assert base == {"a": {"b": 1, "c": 2}, "d": 3}
