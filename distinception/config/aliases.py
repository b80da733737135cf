"""Keys that moved when `ps` was split into sections of their own, and the one place that maps
them: every entry point (YAML, `--set`, job specs, mappings, sweep spaces, saved configs) reads
an old key such as `ps.lr` as its new one (`optim.lr`), with a DeprecationWarning naming it."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from distinception.config.checks import ConfigError


def _moved(section: str, names: str, renamed: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {f"ps.{n}": f"{section}.{n}" for n in names.split()}
    out |= {f"ps.{old}": f"{section}.{new}" for old, new in (renamed or {}).items()}
    return out


#: Old dotted key -> new dotted key.
MOVED: dict[str, str] = {
    **_moved(
        "optim",
        "optimizer lr momentum weight_decay lr_decay lr_decay_epochs warmup_examples clip_norm",
    ),
    **_moved("averager", "polyak polyak_start ema_decay", {"averager_interval_s": "interval_s"}),
    **_moved("transport", "transfer_dtype compute_dtype", {"transport": "channel"}),
    **_moved(
        "placement",
        "replica_cpus replica_gpus shard_cpus averager_cpus replica_resources shard_resources "
        "max_replica_restarts max_shard_restarts elastic min_replicas elastic_wait_s",
    ),
}


class RenamedKeyWarning(DeprecationWarning):
    """An old key was read as its new one; the command line shows these as one line each."""


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated: it is now {new}; the old key still works",
        RenamedKeyWarning,
        stacklevel=3,
    )


def current_key(key: str, *, warn: bool = True) -> str:
    """A dotted key (`ps.lr`, `ps.replica_resources.replica`) under its current name."""
    head, _, name = key.partition(".")
    field, dot, rest = name.partition(".")
    new = MOVED.get(f"{head}.{field}")
    if new is None:
        return key
    if warn:
        _warn(f"{head}.{field}", new)
    return new + dot + rest


def moved_from(section: str) -> dict[str, str]:
    """The keys that left `section`, by old and by new field name, with their new dotted keys:
    what a "did you mean" looks at besides the section's own fields."""
    out: dict[str, str] = {}
    for old, new in MOVED.items():
        if old.partition(".")[0] == section:
            out |= {new.partition(".")[2]: new, old.partition(".")[2]: new}
    return out


def migrate(doc: Mapping[Any, Any]) -> dict[Any, Any]:
    """A nested config document with every old key moved to its new section (a warning each).

    A key given both ways in one document is refused: which one is meant would be a guess."""
    out: dict[Any, Any] = dict(doc)
    moved: dict[str, dict[str, Any]] = {}
    for section, values in doc.items():
        if not isinstance(values, Mapping):
            continue
        kept: dict[Any, Any] = {}
        for key, value in values.items():
            new = MOVED.get(f"{section}.{key}")
            if new is None:
                kept[key] = value
                continue
            _warn(f"{section}.{key}", new)
            target, _, name = new.partition(".")
            moved.setdefault(target, {})[name] = value
        out[section] = kept
    for target, values in moved.items():
        given = out.get(target)
        if given is not None and not isinstance(given, Mapping):
            continue  # the section itself is refused when it loads, in its own words
        twice = [n for n in values if given and n in given]
        if twice:
            new = f"{target}.{twice[0]}"
            old = next(o for o, n in MOVED.items() if n == new)
            raise ConfigError(f"{old}: also given as {new}; expected only {new}")
        out[target] = {**values, **(given or {})}
    return out
