"""The public surface: what the command line does, as functions a script or notebook calls.

Everything else in the package is private and may change. Each function imports its room when
called, so `import distinception` stays cheap (no torch, Ray or MLflow until a job runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from distinception.config import JobConfig
from distinception.ps.callbacks import Callback, TrainResult
from distinception.recipes import load_config

if TYPE_CHECKING:
    from distinception.tune.ensemble import EnsembleResult
    from distinception.tune.space import SearchSpace
    from distinception.tune.sweep import SweepResult


def train(
    cfg: JobConfig,
    *,
    callbacks: Sequence[Callback] = (),
    track: bool = True,
    address: str | None = None,
    resume: str | None = None,
    parent_run_id: str | None = None,
    straggler: float = 1.0,
) -> TrainResult:
    """Train `cfg` (or continue the job checkpointed in `resume`) on the parameter server.

    With `track` the job is one MLflow run, recorded before `callbacks` see each event (so they
    may read the run); without it only `callbacks` hear of it. Ray is joined at `address` (or
    `RAY_ADDRESS`), else started locally and shut down afterwards. `straggler` is for
    benchmarks, not part of the job's config: replica 0 takes that many times its compute time
    per step (1 = none), to measure how the job copes with a slow worker."""
    from distinception.training import train as run_train

    return run_train(
        cfg,
        callbacks=callbacks,
        track=track,
        address=address,
        resume=resume,
        parent_run_id=parent_run_id,
        straggler=straggler,
    )


def sweep(
    cfg: JobConfig,
    space: SearchSpace | Sequence[str] = (),
    *,
    samples: int = 8,
    scheduler: str = "asha",
    max_concurrent: int | None = None,
    out_dir: str = "",
    address: str | None = None,
    callbacks: list[Any] | None = None,
) -> SweepResult:
    """Ray Tune over the augment and the learning rate: each trial a whole training, each an
    MLflow child run.

    `space` is a search space or `section.key=DOMAIN` items over the default space (as
    `--space`); `callbacks` are extra `ray.tune.Callback`s."""
    from distinception.tune.space import SearchSpace, build_space
    from distinception.tune.sweep import sweep as run_sweep

    if not isinstance(space, SearchSpace):
        space = build_space(space)
    return run_sweep(
        cfg,
        space,
        samples=samples,
        scheduler=scheduler,
        max_concurrent=max_concurrent,
        out_dir=out_dir,
        address=address,
        callbacks=callbacks,
    )


def ensemble(
    cfg: JobConfig,
    *,
    members: int = 7,
    augments: str = "paper,caffe",
    sweep_dir: str | None = None,
    max_concurrent: int | None = None,
    out_dir: str = "",
    address: str | None = None,
) -> EnsembleResult:
    """Train `members` models from the same initial weights, each with its own augment and data
    order; score the ensemble with `evaluate` on its parent run id."""
    from distinception.tune.ensemble import ensemble as run_ensemble

    return run_ensemble(
        cfg,
        members=members,
        augments=augments,
        sweep_dir=sweep_dir,
        max_concurrent=max_concurrent,
        out_dir=out_dir,
        address=address,
    )


def evaluate(
    target: str,
    crops: Sequence[str] = ("center",),
    *,
    tracking_uri: str | None = None,
    split: str = "val",
    limit: int = 0,
    data_path: str = "",
    log: bool = True,
) -> dict[str, Any]:
    """Top-1/top-5 error of a training run, a logged model or an ensemble under each crop
    scheme (`center`, `ten`, `paper144`); an ensemble gets the members x crops grid."""
    import os

    from distinception.evaluation import evaluate_target
    from distinception.tracking import default_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    return evaluate_target(
        target, list(crops), uri=uri, split=split, limit=limit, data_path=data_path, log=log
    )


__all__ = [
    "Callback",
    "JobConfig",
    "TrainResult",
    "ensemble",
    "evaluate",
    "load_config",
    "sweep",
    "train",
]
