"""Loading, merging, validating and saving configurations.

Order of precedence (later wins): schema defaults (= ``arguments/default.yaml``) -> each argument
file given with ``-c/--config`` (partial YAML: only the keys it changes) -> each ``--set a.b=c``.
Overriding one key of a section keeps every other key of that section. Unknown keys and values of
the wrong type are errors that name the file (or the ``--set``) and the key. YAML is parsed with
``yaml.safe_load``; nothing is ever ``eval``-ed.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Union

import yaml

from scene.atomic import write_text
from scene.errors import UserError

from .schema import Config

DEFAULT_YAML = Path(__file__).with_name("default.yaml")


class ConfigError(UserError, ValueError):
    """A bad configuration value or key; the message names where it came from."""


# ---------------------------------------------------------------------------------------------
# type checking
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e10" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported schema type {tp!r}")


def _merge(obj: Any, data: dict, where: str) -> None:
    """Update the dataclass ``obj`` in place from a (partial) nested dict."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = _hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {key!r} (known: {known})" if where
                              else f"unknown section {key!r} (known: {known})")
        cur = getattr(obj, key)
        name = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(cur):
            _merge(cur, value, name)
        else:
            setattr(obj, key, _check_bounds(_coerce(value, hints[key], name), fields[key].metadata, name))


def _check_bounds(value: Any, meta, where: str) -> Any:
    lo, choices = meta.get("min"), meta.get("choices")
    if lo is not None and value < lo:
        raise ConfigError(f"{where}: must be >= {lo}, got {value!r}")
    if choices is not None and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# public API
def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` -> (["a", "b"], value), the value parsed as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"--set {text!r}: the key must be section.key (e.g. rgb.iterations=7000)")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: cannot parse the value {raw!r}") from None
    return parts, value


def load_config(argfiles: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> Config:
    """Defaults, then each argument file, then each ``--set`` override."""
    return apply_overrides(apply_argfiles(Config(), argfiles), overrides)


def apply_argfiles(cfg: Config, argfiles: Iterable[str | Path]) -> Config:
    """Merge partial YAML argument files into ``cfg`` in place, in order (and return it)."""
    for f in argfiles:
        data = load_yaml(f)
        try:
            _merge(cfg, data, "")
        except ConfigError as e:
            raise ConfigError(f"{f}: {e}") from None
    return cfg


def apply_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """Apply ``--set section.key=value`` strings to ``cfg`` in place (and return it)."""
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for p in reversed(parts):
            nested = {p: nested}
        try:
            _merge(cfg, nested, "")
        except ConfigError as e:
            raise ConfigError(f"--set {text!r}: {e}") from None
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    _merge(cfg, data, "")
    return cfg


def save_config(cfg: Config, path: str | Path, meta: dict | None = None) -> None:
    """Write the resolved config (plus a ``_meta`` block: git commit, argfiles, overrides)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = to_dict(cfg)
    if meta:
        data["_meta"] = meta
    write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_saved_config(path: str | Path) -> tuple[Config, dict]:
    """Parse a config written by :func:`save_config` back into a ``Config`` (and its meta)."""
    data = load_yaml(path)
    meta = data.pop("_meta", {}) or {}
    try:
        return from_dict(data), meta
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def default_yaml_text() -> str:
    """``arguments/default.yaml`` as generated from the schema: every field with its help comment."""
    lines = [
        "# COS3D configuration: every field with its default (the paper / official-code setting).",
        "# Generated from arguments/schema.py by `python -m arguments --write-default`; do not edit by hand.",
        "# Argument files (arguments/ablations/*.yaml) override only the keys they name.",
    ]

    def emit(obj: Any, indent: int) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            pad = "  " * indent
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:  # {f.metadata.get('help', '')}")
                emit(value, indent + 1)
            else:
                dumped = yaml.safe_dump(value, default_flow_style=True).strip()
                if dumped.endswith("\n..."):
                    dumped = dumped[: -len("\n...")]
                dumped = dumped.removesuffix("...").strip()
                lines.append(f"{pad}{f.name}: {dumped}  # {f.metadata['help']}")

    cfg = Config()
    for f in dataclasses.fields(cfg):
        lines.append("")
        lines.append(f"{f.name}:  # {f.metadata.get('help', '')}")
        emit(getattr(cfg, f.name), 1)
    return "\n".join(lines) + "\n"


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """The two config flags every CLI of the project takes."""
    parser.add_argument(
        "-c", "--config", action="append", default=[], metavar="ARGFILE",
        help="argument file (partial YAML) applied over arguments/default.yaml; repeatable, later wins",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
        help="override one config value, e.g. --set rgb.iterations=7000; repeatable, applied after the argument files",
    )
