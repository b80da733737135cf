"""What a `bench` command line may name: the systems `bench convergence` compares and the
asynchronous update rules of `bench updates`.

Plain data, apart from the benchmarks, so a command line naming one that does not exist is
refused, and `--help` lists them, without loading torch or Ray."""

from __future__ import annotations

from typing import Any

from distinception.config import ConfigError

#: Named update rules: config values (dotted keys) over the recipe's. "default" is the recipe as
#: it is.
UPDATES: dict[str, dict[str, Any]] = {
    "default": {},
    # What the parameter server did before momentum correction and the lag rule: Downpour with
    # the full explicit momentum, and one step of lag even for a lone replica.
    "previous": {"ps.momentum_correction": "none", "ps.max_lag": 1},
    # The whole correction (the platform's default): the explicit momentum lowered by all the
    # implicit momentum measured; and half of it.
    "full-mc": {"ps.momentum_correction": "full"},
    "half-mc": {"ps.momentum_correction": "partial:0.5"},
    # The share moved by the total momentum the shard measures (YellowFin's closed loop; the
    # demo recipe's).
    "loop-mc": {"ps.momentum_correction": "closed-loop"},
    "no-lag": {"ps.max_lag": 0},
    "lag": {"ps.max_lag": 1},
    "dc": {"ps.delay_compensation": 2.0},
    "dc-only": {"ps.momentum_correction": "none", "ps.max_lag": 1, "ps.delay_compensation": 2.0},
    "dc-constant": {"ps.delay_compensation": 0.04, "ps.dc_adaptive": False},
    "scale": {"ps.momentum_correction": "none", "ps.max_lag": 1, "ps.staleness": "scale"},
    "scale+mc": {"ps.staleness": "scale"},
    "bound:1": {"ps.momentum_correction": "none", "ps.staleness": "bound:1"},
    "bound:1+mc": {"ps.staleness": "bound:1"},
    "warm-start": {"ps.momentum_correction": "none", "ps.max_lag": 1, "ps.warm_start_updates": 60},
    "adagrad": {"ps.momentum_correction": "none", "ps.max_lag": 1, "optim.optimizer": "adagrad"},
}


def parse_updates(names: tuple[str, ...]) -> tuple[str, ...]:
    return _known("--updates", names, UPDATES)


#: The series `bench convergence` draws.
POLYAK, RAW, DDP, LOCAL = "async PS, Polyak", "async PS, raw", "sync DDP", "local"
PREV_POLYAK, PREV_RAW = "async PS previous update, Polyak", "async PS previous update, raw"
#: DDP with the per-worker batch divided by the workers: every update averages as many examples
#: as one of the PS's or the local loop's, which separates asynchrony from update size.
DDP_SPLIT = "sync DDP, split batch"
#: Which systems `systems` may name, and the series each adds.
SYSTEMS = {
    "ps": (POLYAK, RAW),
    "ps-previous": (PREV_POLYAK, PREV_RAW),
    "ddp": (DDP,),
    "ddp-split": (DDP_SPLIT,),
    "local": (LOCAL,),
}


def parse_systems(names: tuple[str, ...]) -> tuple[str, ...]:
    return _known("--systems", names, SYSTEMS)


def _known(flag: str, names: tuple[str, ...], known: dict[str, Any]) -> tuple[str, ...]:
    if not names or any(name not in known for name in names):
        expected = ", ".join(known)
        raise ConfigError(f"{flag}={','.join(names)!r}: expected a comma list of {expected}")
    return names
