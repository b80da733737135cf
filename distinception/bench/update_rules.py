"""The named asynchronous update rules `bench updates` compares: config values over a recipe's.

Plain data, apart from the benchmark, so a command line naming a rule that does not exist is
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
    bad = [n for n in names if n not in UPDATES]
    if bad or not names:
        raise ConfigError(
            f"--updates={','.join(names)!r}: expected a comma list of " + ", ".join(UPDATES)
        )
    return names
