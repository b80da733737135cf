"""What a training job reports while it runs, and what it returns.

A job takes a list of callbacks; each method does nothing unless a callback overrides it, so
MLflow tracking, Tune reporting and a user's own callback each say only what they care about and
none inherits from another. This module imports neither Ray nor MLflow, so the public API, the
tracking room and the Tune room can all import it without importing the coordinator.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from distinception.config import JobConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What one training job did: its budget spent, final errors, curves and faults survived."""

    run_id: str | None
    examples: int
    epochs: float
    seconds: float
    updates: int
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    faults: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    staleness_hist: dict[int, int] = field(default_factory=dict)
    replica_stats: dict[int, dict[str, Any]] = field(default_factory=dict)
    checkpoint_dir: str = ""
    data_path: str = ""

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0


class Callback:
    """Hooks into a training job's driver; each method does nothing by default.

    The driver calls them from its own loop, so a slow callback slows the loop's bookkeeping (not
    the replicas, which never wait for the driver)."""

    def on_start(self, cfg: JobConfig, info: dict[str, Any]) -> str | None:
        """Called once, when the actors are up; may return a run id, which is stored with
        checkpoints so that `--resume` continues the same run (`info["run_id"]` holds it then)."""
        return None

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Shard statistics every few seconds and each evaluation; `step` counts examples."""

    def on_checkpoint(self, directory: str, progress: dict[str, Any]) -> None:
        """After a checkpoint is complete on disk."""

    def on_end(self, result: TrainResult, model: torch.nn.Module | None) -> None:
        """Once, with the result and the averaged model, when the job has finished."""

    def on_failure(self, error: BaseException) -> None:
        """Once, when the job fails or is stopped; the error is raised again afterwards."""


class CallbackList(Callback):
    """Calls every callback in order. The job's run id is the first one a callback returns: the
    run that tracks the job (MLflow) comes first, and others may read it from there.

    At the end every callback hears of it even when one before it raised: a failed model upload
    must not keep a user's callback from the result. The first error of `on_end` is raised once
    all have run; errors of `on_failure` are logged, so the job's own error is the one raised."""

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_start(self, cfg: JobConfig, info: dict[str, Any]) -> str | None:
        run_id = None
        for cb in self.callbacks:
            returned = cb.on_start(cfg, info)
            run_id = run_id or returned
        return run_id

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        for cb in self.callbacks:
            cb.on_metrics(metrics, step)

    def on_checkpoint(self, directory: str, progress: dict[str, Any]) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(directory, progress)

    def on_end(self, result: TrainResult, model: torch.nn.Module | None) -> None:
        first: Exception | None = None
        for cb in self.callbacks:
            try:
                cb.on_end(result, model)
            except Exception as err:
                first = first or err
        if first is not None:
            raise first

    def on_failure(self, error: BaseException) -> None:
        for cb in self.callbacks:
            try:
                cb.on_failure(error)
            except Exception:
                log.exception(
                    "%s.on_failure raised; the job's own error follows", type(cb).__name__
                )


__all__ = ["Callback", "CallbackList", "TrainResult"]
