"""Documents into configs: YAML files, `--set` overrides and nested mappings, through one
loader (`load_section`) that job specs use as well."""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from distinception.config.aliases import migrate, moved_from
from distinception.config.checks import ConfigError, _fail
from distinception.config.sections import AUGMENT_PRESETS, JobConfig

_SECTIONS: dict[str, type] = {
    f.name: typing.get_type_hints(JobConfig)[f.name]
    for f in dataclasses.fields(JobConfig)
    if f.name != "name"
}


def _shown(name: str) -> str:
    """A key as typed, or its repr when it holds characters that would break the line."""
    return name if name.isprintable() else repr(name)


def _unknown(name: str, key: Any, allowed: Iterable[str], section: str = "") -> ConfigError:
    """The error for a key that is not a field; in `ps` the suggestion also looks at the keys
    that moved out of it, under their new names (`ps.lrr`: did you mean 'optim.lr'?)."""
    allowed = sorted(allowed)
    hint = _closest(str(key), moved_from(section) | {a: a for a in allowed})
    also = f" (did you mean {hint!r}?)" if hint else ""
    return ConfigError(f"{_shown(name)}: unknown key{also}; expected one of " + ", ".join(allowed))


def _closest(key: str, shown: dict[str, str]) -> str:
    hint = difflib.get_close_matches(key, sorted(shown), n=1)
    return shown[hint[0]] if hint else ""


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Turn YAML/CLI values into the field's type, refusing anything that would need a guess."""
    target = annotation if isinstance(annotation, type) else type(None)
    if target in (int, float) and isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; accept any spelling Python parses as a number.
        try:
            value = float(value)
        except ValueError:
            _fail(name, value, "an integer" if target is int else "a number")
    if target is bool:
        if isinstance(value, bool):
            return value
        _fail(name, value, "true or false")
    if target is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        ):
            _fail(name, value, "an integer")
        return int(value)
    if target is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(name, value, "a number")
        try:
            value = float(value)
        except OverflowError:
            _fail(name, value, "a finite number")
        if not math.isfinite(value):
            _fail(name, value, "a finite number")
        return float(value)
    if target is str:
        if isinstance(value, (dict, list)) or value is None:
            _fail(name, value, "a string")
        return str(value)
    return value


def load_section(name: str, cls: type, values: Any, base: Any = None) -> Any:
    """Build the frozen dataclass `cls` from a mapping, over `base` (default: its defaults).

    The one loader of every validated document here: run configs and job specs alike. Each key
    must be a field, each value is coerced to the field's type or refused, a field that is itself
    a dataclass is loaded the same way, and the class's own checks run last; every refusal is one
    line naming `name.key` (just `key` when `name` is empty), the value and what is allowed."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        _fail(name, values, "a mapping of " + ", ".join(f.name for f in dataclasses.fields(cls)))
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(cls)} if base else {}
    for key, value in values.items():
        where = f"{name}.{key}" if name else str(key)
        if key not in names:
            raise _unknown(where, key, names, name)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            # An empty nested section (`runtime_env:` with nothing under it) keeps its defaults.
            value = {} if value is None else value
            kwargs[key] = load_section(where, hint, value, kwargs.get(key))
        else:
            kwargs[key] = _coerce(where, value, hint)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{name}.{err}" if name else str(err)) from None


def _build_section(section: str, cls: type, values: Any, base: Any) -> Any:
    if section == "augment" and isinstance(values, str):
        if values not in AUGMENT_PRESETS:
            _fail("augment", values, "one of " + ", ".join(AUGMENT_PRESETS) + " or a mapping")
        return AUGMENT_PRESETS[values]
    return load_section(section, cls, values, base)


def nest(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Dotted keys (`optim.lr`) as the nested mapping `from_dict` reads."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = value
    return out


def from_dict(values: Mapping[str, Any], base: JobConfig | None = None) -> JobConfig:
    """Overlay a nested mapping (a YAML document) on `base`; unknown keys and bad values fail."""
    base = base or JobConfig()
    if not isinstance(values, Mapping):
        raise ConfigError(f"config={type(values).__name__}: expected a mapping of sections")
    out: dict[str, Any] = {}
    for key, value in migrate(values).items():
        if key == "name":
            out["name"] = _coerce("name", value, str)
        elif key in _SECTIONS:
            out[key] = _build_section(key, _SECTIONS[key], value, getattr(base, key))
        else:
            raise _unknown(str(key), str(key), ["name", *_SECTIONS])
    return dataclasses.replace(base, **out)


def load_yaml(path: str | Path, base: JobConfig | None = None) -> JobConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config={str(path)!r}: expected an existing YAML file")
    import yaml

    try:
        doc = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"--config={str(path)!r}: not UTF-8 text (byte {err.start}); expected a YAML file"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"--config={str(path)!r}: not valid YAML{where}") from None
    return from_dict(doc, base)


def apply_overrides(cfg: JobConfig, overrides: Iterable[str]) -> JobConfig:
    """Apply `section.key=value` strings; values parse as YAML scalars (1e-3, true, bound:2)."""
    import yaml

    nested: dict[str, Any] = {}
    presets: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        if len(parts) == 1:
            # A whole section by name (augment=caffe) applies before that section's fields.
            (presets if parts[0] in _SECTIONS else nested)[parts[0]] = value
        elif len(parts) == 2:
            nested.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(f"--set {item!r}: expected section.key=value (two levels)")
    if presets:
        cfg = from_dict(presets, cfg)
    return from_dict(nested, cfg)
