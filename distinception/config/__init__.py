"""Validated run configuration: one small frozen dataclass per part, composed into `JobConfig`.

Every value is checked where it enters (YAML, ``--set``, Tune samples), so a typo fails at load
with one line naming the field, the value and what is allowed, never halfway through a run.
Nothing here imports torch, ray or mlflow: every room may depend on this module.

Its parts: `checks` (the error and the checks), `sections` (the dataclasses) and `loader`
(YAML, overrides and mappings into them). Import from the package.
"""

from distinception.config.checks import ConfigError
from distinception.config.loader import (
    apply_overrides,
    from_dict,
    load_section,
    load_yaml,
)
from distinception.config.sections import (
    AUGMENT_PRESETS,
    COMPUTE_DTYPES,
    INTERPOLATIONS,
    MOMENTUM_CORRECTION,
    OPTIMIZERS,
    POLYAK_MODES,
    TRANSFER_DTYPES,
    TRANSPORTS,
    VARIANTS,
    AugmentConfig,
    DataConfig,
    JobConfig,
    ModelConfig,
    PSConfig,
    RunConfig,
    TrackingConfig,
    parse_staleness,
)

__all__ = [
    "AUGMENT_PRESETS",
    "COMPUTE_DTYPES",
    "INTERPOLATIONS",
    "MOMENTUM_CORRECTION",
    "OPTIMIZERS",
    "POLYAK_MODES",
    "TRANSFER_DTYPES",
    "TRANSPORTS",
    "VARIANTS",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "ModelConfig",
    "PSConfig",
    "RunConfig",
    "TrackingConfig",
    "apply_overrides",
    "from_dict",
    "load_section",
    "load_yaml",
    "parse_staleness",
]
