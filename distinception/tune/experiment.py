"""The skeleton every many-trial job shares: a sweep and an ensemble differ only in their trials.

Both resolve the job's paths and generate its data once on the driver, make an output
directory, join or start Ray, decide how many trials run at once and shrink each trial to its
slot of the cluster, and open one MLflow parent run for the trials to nest under. Keeping that
here means a fix to any of it (how a slot is sized, what the parent run records) reaches both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distinception.config import JobConfig
from distinception.ps.session import ray_session
from distinception.tune.trials import absolute_paths, fit_to, plan_concurrency


def metric_of(cfg: JobConfig) -> str:
    """The error trials are ranked by: the Polyak weights' unless the job turns Polyak off."""
    return "raw_top1_error" if cfg.averager.polyak == "off" else "polyak_top1_error"


@dataclass(frozen=True)
class Plan:
    """What is settled before anything starts, so a bad option fails before Ray or MLflow."""

    cfg: JobConfig  # as the user gave it
    base: JobConfig  # absolute paths, data generated
    out: Path
    kind: str  # "sweep" | "ensemble"
    metric: str

    @property
    def tracking_uri(self) -> str:
        return self.base.tracking.tracking_uri


@dataclass(frozen=True)
class Slots:
    """The running experiment: what each trial starts from and the parent run they nest under."""

    #: `base` with CPU shares fitted to one slot, no progress bar and no checkpoints.
    trial_base: JobConfig
    parent_run_id: str
    max_concurrent: int


def plan(cfg: JobConfig, kind: str, out_dir: str = "") -> Plan:
    """Resolve paths, generate the data once, and make the output directory
    (`sweeps/NAME-TIME` or `ensembles/NAME-TIME` unless `out_dir` names one)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(out_dir or f"{kind}s/{cfg.name}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    return Plan(cfg, absolute_paths(cfg), out, kind, metric_of(cfg))


@contextlib.contextmanager
def slots(
    p: Plan,
    params: dict[str, Any],
    *,
    address: str | None = None,
    max_concurrent: int | None = None,
    trials: int | None = None,
) -> Iterator[Slots]:
    """Ray up, the trials' slots sized, and the parent run open (with the base job's fields as
    `base.*` and `params`) for the body; Ray is shut down afterwards if this started it.

    `trials` caps the concurrency when the number of trials is known (an ensemble's members)."""
    import ray

    from distinception.tracking import parent_run

    with ray_session(address):
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1))
        concurrent = plan_concurrency(p.base, cluster_cpus, max_concurrent)
        if trials is not None:
            concurrent = min(trials, concurrent)
        fitted = fit_to(p.base, cluster_cpus / concurrent)
        fitted = fitted.replace(
            run=dataclasses.replace(fitted.run, progress=False, checkpoint_dir="")
        )
        with parent_run(
            p.base,
            p.kind,
            f"{p.kind}-{p.cfg.name}",
            {
                **{f"base.{k}": v for k, v in p.cfg.flat().items()},
                **params,
                f"{p.kind}.max_concurrent": concurrent,
                f"{p.kind}.metric": p.metric,
                f"{p.kind}.out_dir": str(p.out),
            },
        ) as parent:
            yield Slots(fitted, parent, concurrent)


__all__ = ["Plan", "Slots", "metric_of", "plan", "slots"]
