"""Validated run configuration: one small frozen dataclass per part, composed into `JobConfig`.

Every value is checked where it enters (YAML, ``--set``, Tune samples), so a typo fails at load
with one line naming the field, the value and what is allowed, never halfway through a run.
Nothing here imports torch, ray or mlflow: every room may depend on this module.

Its parts: `checks` (the error and the checks), `sections` (the job's sections and `JobConfig`),
`ps` (the parameter server's sections: optim, ps, averager, transport, placement), `aliases`
(keys that moved, still read under their old names) and `loader` (YAML, overrides and mappings
into them). Import from the package.
"""

from distinception.config.aliases import MOVED, RenamedKeyWarning, current_key
from distinception.config.checks import ConfigError
from distinception.config.loader import (
    apply_overrides,
    from_dict,
    load_section,
    load_yaml,
    nest,
)
from distinception.config.ps import (
    COMPUTE_DTYPES,
    OPTIMIZERS,
    POLYAK_MODES,
    TRANSFER_DTYPES,
    TRANSPORTS,
    AveragerConfig,
    OptimConfig,
    PlacementConfig,
    PSConfig,
    TransportConfig,
    parse_momentum_correction,
    parse_staleness,
)
from distinception.config.sections import (
    AUGMENT_PRESETS,
    CROP_SCHEMES,
    GOOGLENET,
    INTERPOLATIONS,
    SHUFFLES,
    TORCHVISION,
    VARIANTS,
    AugmentConfig,
    DataConfig,
    JobConfig,
    ModelConfig,
    RunConfig,
    TrackingConfig,
    check_crops,
)

__all__ = [
    "AUGMENT_PRESETS",
    "COMPUTE_DTYPES",
    "CROP_SCHEMES",
    "GOOGLENET",
    "INTERPOLATIONS",
    "MOVED",
    "OPTIMIZERS",
    "POLYAK_MODES",
    "SHUFFLES",
    "TORCHVISION",
    "TRANSFER_DTYPES",
    "TRANSPORTS",
    "VARIANTS",
    "AugmentConfig",
    "AveragerConfig",
    "ConfigError",
    "DataConfig",
    "JobConfig",
    "ModelConfig",
    "OptimConfig",
    "PSConfig",
    "PlacementConfig",
    "RenamedKeyWarning",
    "RunConfig",
    "TrackingConfig",
    "TransportConfig",
    "apply_overrides",
    "check_crops",
    "current_key",
    "from_dict",
    "load_section",
    "load_yaml",
    "nest",
    "parse_momentum_correction",
    "parse_staleness",
]
