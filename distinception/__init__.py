"""distinception: GoogLeNet trained with asynchronous SGD on a Ray parameter server.

The public API is `distinception.api`, re-exported here. The names resolve on first use, so
`import distinception` (and with it every command's start-up) stays as cheap as an empty module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "JobConfig",
    "TrainResult",
    "__version__",
    "ensemble",
    "evaluate",
    "load_config",
    "sweep",
    "train",
]

if TYPE_CHECKING:
    from distinception.api import (
        Callback,
        JobConfig,
        TrainResult,
        ensemble,
        evaluate,
        load_config,
        sweep,
        train,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from distinception import api

        return getattr(api, name)
    raise AttributeError(f"module 'distinception' has no attribute {name!r}")
