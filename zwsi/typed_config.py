"""The one config loader: a YAML file or a mapping, checked against a dataclass's type hints.

Every config of the project (model, generation, training, VAE training) is a dataclass whose fields have defaults;
a file states only what differs. `from_mapping` builds one from a mapping and `load_config` from a YAML file:

* an unknown key is an error naming its dotted path, the file and the valid keys of its section;
* a value of the wrong type is an error naming the key, the value and the type expected. There are no truthy
  strings (``tissue: "no"``) and no numbers as strings (``coarsest_mpp: "8"``); an integer is accepted where a
  float is expected (and becomes one), a float is not accepted where an integer is;
* nested dataclasses are nested mappings, starting from the section's default in its parent (so one section class
  can serve two configs with different defaults); lists become tuples where the field is a tuple;
* ranges and choices are the dataclass's own business (``__post_init__`` or ``validate()``), so each config states
  them beside its fields.

YAML is read with YAML 1.2's float syntax, so ``lr: 1e-4`` is the number 1e-4 (YAML 1.1, PyYAML's default, reads it
as a string because it has no dot).

    cfg = load_config(TrainConfig, "configs/train/tiny-cpu.yaml", overrides={"budget": {"max_steps": 5}})
    cfg = from_mapping(GenerateConfig, {"steps": 4}, base=GenerateConfig.preset("tiny"), where="--config x.yaml")
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")

_FLOAT_12 = re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$")
"""YAML 1.2 floats PyYAML misses: an exponent without a dot (``1e-4``)."""


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that also reads ``1e-4`` as a float (YAML 1.2)."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
    return Loader


def read_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file is ``{}``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, or a top level that is not a mapping (the file is named).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_yaml_loader())  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        # one line (PyYAML puts the offending line and a caret on lines of their own): every command prints it as is
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra``'s keys replaced; nested mappings are merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def from_mapping(cls: type[T], data: Any, *, where: str = "config", base: T | None = None, section: str = "") -> T:
    """A ``cls`` dataclass from ``data``: ``base``'s values (default: the field defaults) with ``data``'s replaced.

    Args:
        cls: the dataclass.
        data: the mapping (as read from YAML or JSON).
        where: what the mapping came from (a file name), named in every error.
        base: the instance whose values keys not in ``data`` keep.
        section: dotted path of this mapping inside the whole config ("" at the top).

    Raises:
        ValueError: ``data`` is not a mapping, holds an unknown key, or a value of the wrong type; or the
            dataclass's own validation failed.
    """
    here = section or "top level"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: {here} must be a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(str(k) for k in data if k not in names)
    if unknown:
        dotted = [_dotted(section, k) for k in unknown]
        raise ValueError(f"{where}: unknown config key(s) {dotted}; valid keys at {here} are {names}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {}
    for name, value in data.items():
        inner = getattr(base, name) if base is not None else _section_default(fields[name], hints[name])
        kwargs[name] = _coerce(hints[name], value, _dotted(section, name), where, inner)
    if base is not None:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    return cls(**kwargs)


def load_config(cls: type[T], path: str | Path, *, what: str = "config", base: T | None = None,
                overrides: Mapping[str, Any] | None = None) -> T:
    """`from_mapping` of a YAML file (with nested ``overrides`` merged over it); errors name the file."""
    data = merge(read_yaml(path, what), overrides or {})
    return from_mapping(cls, data, where=str(path), base=base)


def _section_default(f: dataclasses.Field[Any], hint: Any) -> Any:
    """The default of a nested-section field (a parent may give a section other defaults than its class has)."""
    if not dataclasses.is_dataclass(hint):
        return None
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def _dotted(section: str, key: object) -> str:
    return f"{section}.{key}" if section else str(key)


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s" if args else "a list"
    if origin is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return str(hint)


def _coerce(hint: Any, value: Any, key: str, where: str, base: Any = None) -> Any:
    """``value`` checked against ``hint`` (and converted: list -> tuple, int -> float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key, where, base)
            except ValueError:
                continue
        raise _type_error(hint, value, key, where)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where=where, base=base, section=key)  # type: ignore[arg-type]
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(hint, value, key, where)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _type_error(hint, value, key, where)
            return tuple(_coerce(a, v, f"{key}[{i}]", where) for i, (a, v) in enumerate(zip(args, value)))
        items = [_coerce(args[0], v, f"{key}[{i}]", where) if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _type_error(hint, value, key, where)
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(hint, value, key, where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(hint, value, key, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(hint, value, key, where)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _type_error(hint, value, key, where)
        return value
    raise TypeError(f"unsupported config type {hint} at {key}")


def _type_error(hint: Any, value: Any, key: str, where: str) -> ValueError:
    return ValueError(f"{where}: {key} must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
