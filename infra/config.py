"""Typed configuration: dataclasses loaded from YAML/TOML files and dotted `--set` overrides.

Every config is a tree of dataclasses. Defaults live in the dataclasses (one schema), never at call
sites. Loading is strict: an unknown key is an error that names the closest valid key, a value of
the wrong type names the field and the value, and a dataclass may check cross-field constraints in
a `validate()` method. Nothing is silently added or dropped.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration could not be loaded; the message names the key, value and source."""


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _unknown_key(path: str, key: str, valid: list[str], where: str = "") -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        hint = f"did you mean '{_join(path, close[0])}'?"
    else:
        hint = f"valid keys under '{path or '<root>'}': {', '.join(sorted(valid))}"
    return f"unknown key '{_join(path, key)}'{where}; {hint}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _coerce(value: Any, tp: Any, path: str, source: str) -> Any:
    """Checks `value` against the annotation `tp`, converting only where lossless."""
    origin = get_origin(tp)
    where = f"{path or '<root>'}" + (f" (in {source})" if source else "")

    def bad() -> ConfigError:
        return ConfigError(
            f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise bad()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path, source)
            except ConfigError:
                continue
        raise bad()
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise bad()
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad()
        return _from_dict(tp, value, path, source)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # YAML 1.1 reads "1e-3" (no dot) as a string; a float field accepts what float() accepts.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise bad()
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            items = [
                _coerce(v, a, f"{path}[{i}]", source)
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            ]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{path}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        key_tp, val_tp = get_args(tp) or (Any, Any)
        return {
            _coerce(k, key_tp, path, source): _coerce(v, val_tp, _join(path, str(k)), source)
            for k, v in value.items()
        }
    raise ConfigError(f"{where}: unsupported annotation {tp!r} in the schema")


def _from_dict(cls: type[T], data: dict[str, Any], path: str, source: str) -> T:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(
                _unknown_key(path, str(key), list(fields), f" in {source}" if source else "")
            )
    kwargs = {k: _coerce(v, hints[k], _join(path, k), source) for k, v in data.items()}
    obj = cls(**kwargs)
    _validate(obj, path, source)
    return obj


def _validate(obj: Any, path: str, source: str) -> None:
    check = getattr(obj, "validate", None)
    if check is None:
        return
    try:
        check()
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        where = f" (in {source})" if source else ""
        raise ConfigError(f"{path or '<root>'}: {e}{where}") from None


def from_dict(cls: type[T], data: dict[str, Any], source: str = "") -> T:
    """Builds `cls` from a nested dict, strictly (see module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source or 'config'}: top level must be a mapping, got {type(data).__name__}"
        )
    return _from_dict(cls, data, "", source)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain nested dict (tuples become lists) suitable for YAML/JSON."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


def read_file(path: str | Path) -> dict[str, Any]:
    """Reads a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file into a dict."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{p}: is a folder, not a config file") from None
    except (PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read the config file ({e})") from None
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(
                f"{p}: unknown config format '{p.suffix}' (use .yaml, .toml or .json)"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{p}: cannot parse: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def _field_type(cls: type, dotted: str, label: str) -> Any:
    """The annotation at a dotted path, with unknown-key errors naming the closest valid key."""
    tp: Any = cls
    walked = ""
    for part in dotted.split("."):
        inner = _strip_optional(tp)
        if not dataclasses.is_dataclass(inner):
            raise ConfigError(f"--set {label}: '{walked}' is not a section")
        names = [f.name for f in dataclasses.fields(inner) if f.init]
        if part not in names:
            raise ConfigError(f"--set {label}: " + _unknown_key(walked, part, names))
        tp = _hints(inner)[part]
        walked = _join(walked, part)
    return tp


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def parse_override(cls: type, item: str) -> tuple[str, Any]:
    """Parses `a.b.c=value` against the schema of `cls`; values are YAML scalars/lists,
    except for string fields, which take the raw text."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set model.depth=12")
    key, raw = item.split("=", 1)
    key = key.strip()
    tp = _field_type(cls, key, item)
    if _strip_optional(tp) is str:
        value: Any = None if raw.lower() in ("null", "none", "~") and tp is not str else raw
    else:
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: cannot parse value: {e}") from None
    return key, value


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def load(
    cls: type[T],
    base: T | None = None,
    file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> T:
    """Resolves a config: `base` (a preset or the defaults), then a file, then `--set` overrides.

    Each layer is a partial nested dict merged over the previous one, so a file names only what it
    changes. The result is validated as a whole.
    """
    data = to_dict(base if base is not None else cls())
    sources = ["defaults" if base is None else "preset"]
    if file is not None:
        _merge(data, read_file(file))
        sources.append(str(file))
        # Validate the file on its own first so its errors name the file.
        from_dict(cls, data, source=str(file))
    for item in overrides:
        key, value = parse_override(cls, item)
        _set_path(data, key, value)
    return from_dict(cls, data, source="--set" if overrides else sources[-1])


def _merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
