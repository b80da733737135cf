"""Full parameter-server trainings as Ray Tune trials, each an MLflow child run.

A trial is one `Coordinator` run inside the trial's placement group: bundle 0 holds the trial's
driver, one bundle each holds a shard, a replica or the averager. Ray captures the actors a trial
starts into its group, so concurrent trials never take each other's CPUs and a trial that does not
fit waits in Tune's queue instead of deadlocking half-started.

Sweeps and ensembles both run through `run_trials` (inside the skeleton of `experiment.py`); they
differ only in how a trial's `config` becomes a job.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distinception.config import ConfigError, JobConfig
from distinception.ps.callbacks import Callback, TrainResult
from distinception.tracking import TRIAL_TAG, MlflowCallback, close_child_runs, tracking_uri

log = logging.getLogger(__name__)

#: The trial's own driver loop mostly waits on `ray.wait`.
DRIVER_CPUS = 0.05
#: Ray accounts resources in units of 1e-4.
_GRAIN = 1e-4


def _floor(x: float) -> float:
    return math.floor(x / _GRAIN) * _GRAIN


def trial_cpus(cfg: JobConfig) -> float:
    from distinception.ps.capacity import actor_demand

    return DRIVER_CPUS + actor_demand(cfg).get("CPU", 0.0)


def fit_to(cfg: JobConfig, cpus: float) -> JobConfig:
    """`cfg` with its actors' CPU shares scaled down (never up) to fit `cpus` for the trial."""
    need = trial_cpus(cfg)
    if need <= cpus + 1e-9:
        return cfg
    scale = (cpus - DRIVER_CPUS) / (need - DRIVER_CPUS)
    at = cfg.placement
    placement = dataclasses.replace(
        at,
        shard_cpus=_floor(at.shard_cpus * scale),
        replica_cpus=_floor(at.replica_cpus * scale),
        averager_cpus=_floor(at.averager_cpus * scale),
    )
    return cfg.replace(placement=placement)


def bundles(cfg: JobConfig) -> list[dict[str, float]]:
    """The placement group of one trial: its driver's bundle, then bundles for its actors.

    Without custom resources all actors share one bundle: Ray places a captured actor in any
    bundle with room, so with one bundle per actor a small shard could take part of a replica's
    bundle and leave the replica nowhere to go (a trial on one node; trials spread over nodes).
    With `placement.shard_resources` / `placement.replica_resources` (cluster placement), the
    shards and the averager share one bundle holding the shard resources and each replica gets
    its own holding the replica resources, so every actor fits only where it belongs.
    """
    from distinception.ps.capacity import replica_bundle

    ps, at = cfg.ps, cfg.placement
    gpu = {"GPU": at.replica_gpus} if at.replica_gpus else {}
    if not (at.shard_resources or at.replica_resources):
        actors: dict[str, float] = {"CPU": round(trial_cpus(cfg) - DRIVER_CPUS, 4)}
        if gpu:
            actors["GPU"] = ps.num_replicas * at.replica_gpus
        return [{"CPU": DRIVER_CPUS}, actors]
    n_ps = ps.num_shards + 1  # the averager is placed like a shard
    server = {"CPU": round(ps.num_shards * at.shard_cpus + at.averager_cpus, 4)}
    server |= {k: v * n_ps for k, v in at.shard_resources.items()}
    return [{"CPU": DRIVER_CPUS}, server] + [replica_bundle(cfg) for _ in range(ps.num_replicas)]


def plan_concurrency(cfg: JobConfig, cluster_cpus: float, max_concurrent: int | None) -> int:
    """How many trials run at once: what the user asked for, else as many as fit whole."""
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent={max_concurrent}: expected an integer >= 1")
    fit = max(1, int(cluster_cpus // trial_cpus(cfg)))
    return max_concurrent or fit


def absolute_paths(cfg: JobConfig) -> JobConfig:
    """Trials run in their own working directories: resolve every relative path on the driver,
    and generate the built-in data set once here rather than in each trial at the same time."""
    from distinception.data.generated import shards_path

    data = dataclasses.replace(cfg.data, path=shards_path(cfg.data, progress=True))
    tracking = dataclasses.replace(cfg.tracking, tracking_uri=tracking_uri(cfg))
    run = cfg.run
    if run.checkpoint_dir and "://" not in run.checkpoint_dir:
        run = dataclasses.replace(run, checkpoint_dir=str(Path(run.checkpoint_dir).resolve()))
    return cfg.replace(data=data, tracking=tracking, run=run)


class TuneReport(Callback):
    """A Tune report at every evaluation and at the end, naming the MLflow run of the trial
    (`tracker`, a callback listed before this one, has opened it by then)."""

    def __init__(self, metric: str, tracker: MlflowCallback) -> None:
        self.metric = metric
        self.tracker = tracker
        self.budget = 0

    def on_start(self, cfg: JobConfig, info: dict[str, Any]) -> str | None:
        self.budget = cfg.run.example_budget(int(info["train_examples"]))
        return None

    def _report(self, values: dict[str, Any]) -> None:
        from ray import tune

        tune.report(values | {"mlflow_run_id": self.tracker.run_id or ""})

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        # Evaluations past the budget come while the job winds down; the final report follows
        # from `on_end`, so a scheduler never cuts a trial between its budget and its model.
        if self.metric in metrics and not (self.budget and step >= self.budget):
            self._report({k: float(v) for k, v in metrics.items()} | {"examples": step})

    def on_end(self, result: TrainResult, model: Any) -> None:
        final = {k: float(v) for k, v in result.final.items() if k.endswith("_error")}
        self._report(
            final
            | {
                "examples": result.examples,
                "seconds": result.seconds,
                "examples_per_s": result.examples_per_s,
                "finished": 1,
            }
        )


def trial_callbacks(
    cfg: JobConfig, parent_run_id: str, trial_id: str, metric: str
) -> list[Callback]:
    """The trial's MLflow child run, then its Tune reports, which name that run."""
    tracker = MlflowCallback(cfg, parent_run_id=parent_run_id, tags={TRIAL_TAG: trial_id})
    return [tracker, TuneReport(metric, tracker)]


def _trial(config: dict[str, Any], *, make_cfg: Callable, parent: str, metric: str) -> None:
    from ray import tune

    from distinception.ps.coordinator import Coordinator

    cfg: JobConfig = make_cfg(config)
    trial_id = tune.get_context().get_trial_id()
    if not cfg.tracking.run_name:  # named as ranked.json and best.yaml name the trial
        cfg = cfg.replace(
            tracking=dataclasses.replace(cfg.tracking, run_name=f"{cfg.name}-trial-{trial_id}")
        )
    Coordinator(cfg, trial_callbacks(cfg, parent, trial_id, metric)).run()


def _status_callback(uri: str, parent: str) -> Any:
    from ray import tune

    class CloseRuns(tune.Callback):
        """Closes the MLflow run of a trial that ended without closing it itself."""

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            # A finished trial has closed its run as FINISHED; one still RUNNING was stopped.
            close_child_runs(uri, parent, "KILLED", trial.trial_id)

        def on_trial_error(self, iteration, trials, trial, **info) -> None:
            close_child_runs(uri, parent, "FAILED", trial.trial_id)

    return CloseRuns()


@dataclass
class TrialOutcome:
    trial_id: str
    status: str  # finished | stopped | failed
    config: dict[str, Any]
    metrics: dict[str, Any]
    run_id: str
    error: str = ""


def run_trials(
    cfg: JobConfig,
    make_cfg: Callable[[dict[str, Any]], JobConfig],
    param_space: dict[str, Any],
    *,
    parent_run_id: str,
    storage: str,
    name: str,
    num_samples: int,
    metric: str,
    scheduler: Any = None,
    max_concurrent: int,
    seed: int = 0,
    callbacks: list[Any] | None = None,
) -> list[TrialOutcome]:
    """Run trials of `cfg` (already fitted and with absolute paths) and collect what each did."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    uri = cfg.tracking.tracking_uri
    trainable = tune.with_resources(
        tune.with_parameters(_trial, make_cfg=make_cfg, parent=parent_run_id, metric=metric),
        tune.PlacementGroupFactory(bundles(cfg)),
    )
    os.makedirs(storage, exist_ok=True)
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode="min",
            num_samples=num_samples,
            scheduler=scheduler,
            # The generator enforces the limit (Tune ignores max_concurrent_trials with it).
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            callbacks=[_status_callback(uri, parent_run_id), *(callbacks or [])],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    # Anything a dead trial left open is closed as KILLED.
    close_child_runs(uri, parent_run_id, "KILLED")
    outcomes = []
    for result in grid:
        metrics = dict(result.metrics or {})
        status = "failed" if result.error else "finished" if metrics.get("finished") else "stopped"
        outcomes.append(
            TrialOutcome(
                trial_id=str(metrics.get("trial_id", Path(result.path).name)),
                status=status,
                config=dict(result.config or {}),
                metrics=metrics,
                run_id=str(metrics.get("mlflow_run_id", "")),
                error=f"{type(result.error).__name__}: {result.error}"[:300]
                if result.error
                else "",
            )
        )
    return outcomes


__all__ = [
    "DRIVER_CPUS",
    "TrialOutcome",
    "TuneReport",
    "absolute_paths",
    "bundles",
    "fit_to",
    "plan_concurrency",
    "run_trials",
    "trial_callbacks",
    "trial_cpus",
]
