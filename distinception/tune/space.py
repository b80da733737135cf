"""Search spaces over the config dataclasses: what a sweep may vary, and how a sample becomes a job.

A space maps dotted config fields (`augment.area_min`, `optim.lr`) to domains. Keys and both ends of
every range are checked against the dataclasses when the space is built, so a typo or an
out-of-range bound fails before any trial starts, with the same one-line errors as `--set`.

The aspect-ratio range of the paper is symmetric (3/4 to 4/3): when a space samples
`augment.aspect_max` but not `augment.aspect_min`, a trial's `aspect_min` is `1 / aspect_max`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from distinception.config import ConfigError, JobConfig, current_key, from_dict, nest


@dataclass(frozen=True)
class Uniform:
    """A number drawn uniformly from [low, high] (log-uniformly when `log`)."""

    low: float
    high: float
    log: bool = False

    def ends(self) -> tuple[Any, ...]:
        return (self.low, self.high)

    def to_tune(self) -> Any:
        from ray import tune

        return (tune.loguniform if self.log else tune.uniform)(self.low, self.high)

    def __str__(self) -> str:
        return f"{'loguniform' if self.log else 'uniform'}:{self.low:g}:{self.high:g}"


@dataclass(frozen=True)
class Choice:
    """One of a few values (interpolation modes, flip on/off)."""

    values: tuple[Any, ...]

    def ends(self) -> tuple[Any, ...]:
        return self.values

    def to_tune(self) -> Any:
        from ray import tune

        return tune.choice(list(self.values))

    def __str__(self) -> str:
        return "choice:" + ",".join(str(v) for v in self.values)


@dataclass(frozen=True)
class Grid(Choice):
    """Every one of a few values, each in its own trial (Tune's grid search). Where `choice`
    draws at random, and three draws from three values often repeat one, `grid` tries each."""

    def to_tune(self) -> Any:
        from ray import tune

        return tune.grid_search(list(self.values))

    def __str__(self) -> str:
        return "grid:" + ",".join(str(v) for v in self.values)


Domain = Uniform | Choice | Grid


#: What a user sweeps first: how much of the image a crop covers, its aspect range, the
#: photometric and lighting strengths, the resize interpolation, and the learning rate.
DEFAULT_SPACE: dict[str, Domain] = {
    "augment.area_min": Uniform(0.08, 1.0),
    "augment.aspect_max": Uniform(1.0, 1.5),
    "augment.photometric": Uniform(0.0, 0.5),
    "augment.lighting": Uniform(0.0, 0.2),
    "augment.interpolation": Choice(("bilinear", "area", "bicubic", "nearest", "random")),
    "optim.lr": Uniform(0.005, 0.05, log=True),
}


def _tie_aspect(nested: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    augment = nested.get("augment", {})
    if "aspect_max" in augment and "aspect_min" not in augment:
        nested = {
            **nested,
            "augment": {**augment, "aspect_min": 1.0 / float(augment["aspect_max"])},
        }
    return nested


@dataclass(frozen=True)
class SearchSpace:
    domains: Mapping[str, Domain]
    #: Set `aspect_min = 1 / aspect_max` when only `aspect_max` is sampled.
    tie_aspect: bool = True

    def __post_init__(self) -> None:
        if not self.domains:
            raise ConfigError("space={}: expected at least one field to sweep")
        # A key that moved (`ps.lr`) is swept under its new name (`optim.lr`), with a warning.
        object.__setattr__(self, "domains", {current_key(k): d for k, d in self.domains.items()})
        base = JobConfig()
        fields = set(base.flat())
        for key, domain in self.domains.items():
            if key not in fields or key.count(".") != 1:
                import difflib

                hint = difflib.get_close_matches(key, sorted(fields), n=1)
                also = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise ConfigError(f"space {key!r}: not a config field{also}")
            if isinstance(domain, Uniform) and not domain.low <= domain.high:
                raise ConfigError(f"space {key}={domain}: expected low <= high")
            if isinstance(domain, Uniform) and domain.log and domain.low <= 0:
                raise ConfigError(f"space {key}={domain}: expected low > 0 for a log range")
            # Every end of the range must make a valid job on its own.
            for value in domain.ends():
                try:
                    self.apply(base, {key: value})
                except ConfigError as err:
                    raise ConfigError(f"space {key}={domain}: {err}") from None

    def to_tune(self) -> dict[str, dict[str, Any]]:
        """Tune's `param_space`: nested by config section, so a sample is a `from_dict` overlay."""
        return nest({k: d.to_tune() for k, d in self.domains.items()})

    def apply(self, base: JobConfig, sample: Mapping[str, Any]) -> JobConfig:
        """The job a trial runs: `base` with the sampled fields (flat or nested) laid over it."""
        return apply_sample(base, sample, tie_aspect=self.tie_aspect)

    def without(self, keys: Iterable[str]) -> SearchSpace:
        """The space less the fields a user fixed with `--set`."""
        fixed = {current_key(k, warn=False) for k in keys}
        return SearchSpace(
            {k: d for k, d in self.domains.items() if k not in fixed},
            tie_aspect=self.tie_aspect and "augment.aspect_min" not in fixed,
        )

    def describe(self) -> str:
        return ", ".join(f"{k}={d}" for k, d in self.domains.items())

    def trials(self, samples: int) -> int:
        """How many trials `samples` makes: Tune runs the whole grid once per sample."""
        return samples * math.prod(
            len(d.values) for d in self.domains.values() if isinstance(d, Grid)
        )


def apply_sample(
    base: JobConfig, sample: Mapping[str, Any], *, tie_aspect: bool = True
) -> JobConfig:
    """`base` with sampled fields (dotted keys, or nested by section) laid over it."""
    nested = nest(dict(_flatten_sample(sample)))
    return from_dict(_tie_aspect(nested) if tie_aspect else nested, base)


def _flatten_sample(sample: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in sample.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten_sample(value, name + ".")
        else:
            yield name, value


def parse_domain(key: str, text: str) -> Domain:
    """`uniform:A:B`, `loguniform:A:B`, `choice:a,b,c` (one drawn at random per trial) or
    `grid:a,b,c` (every value, each in its own trial); values parse like `--set`."""
    import yaml

    kind, _, rest = text.partition(":")
    expected = "uniform:LOW:HIGH, loguniform:LOW:HIGH, choice:A,B,... or grid:A,B,..."
    if kind in ("uniform", "loguniform"):
        parts = rest.split(":")
        try:
            low, high = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(f"--space {key}={text!r}: expected {expected}") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"--space {key}={text!r}: expected finite bounds")
        return Uniform(low, high, log=kind == "loguniform")
    if kind in ("choice", "grid") and rest:
        values = tuple(yaml.safe_load(v) for v in rest.split(","))
        return Choice(values) if kind == "choice" else Grid(values)
    raise ConfigError(f"--space {key}={text!r}: expected {expected}")


def build_space(items: Iterable[str] = (), fixed: Iterable[str] = ()) -> SearchSpace:
    """The default space, with `KEY=DOMAIN` items replacing or adding fields, less `fixed` keys."""
    domains = dict(DEFAULT_SPACE)
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--space {item!r}: expected section.key=DOMAIN")
        domains[current_key(key.strip())] = parse_domain(key.strip(), text.strip())
    return SearchSpace(domains).without(fixed)


__all__ = [
    "DEFAULT_SPACE",
    "Choice",
    "Grid",
    "SearchSpace",
    "Uniform",
    "apply_sample",
    "build_space",
    "parse_domain",
]
