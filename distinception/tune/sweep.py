"""`distinception sweep`: Ray Tune over the augment (and the learning rate).

Every trial is a whole asynchronous-PS training scored by its Polyak weights' validation error.
ASHA compares trials at equal examples seen (not at equal wall time or report counts, which
depend on how busy the machine is) and stops the worse half at each rung. The ranked table and the
best job as a YAML that `train --config` accepts land in the output directory and in the sweep's
MLflow parent run.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from distinception.config import ConfigError, JobConfig
from distinception.tune.experiment import plan, slots
from distinception.tune.space import SearchSpace
from distinception.tune.trials import TrialOutcome, run_trials

SCHEDULERS = ("asha", "fifo")


@dataclass
class SweepResult:
    parent_run_id: str
    out_dir: str
    best_yaml: str
    ranked: list[dict[str, Any]]
    seconds: float
    max_concurrent: int


def make_scheduler(name: str, max_examples: int) -> Any:
    """The trial scheduler; the metric and mode come from the Tuner."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if name == "fifo":
        return FIFOScheduler()
    if name != "asha":
        raise ConfigError(f"--scheduler={name!r}: expected one of {', '.join(SCHEDULERS)}")
    if max_examples <= 0:
        raise ConfigError(
            "--scheduler=asha: expected an example budget (run.epochs or run.max_examples) "
            "so trials can be compared at equal examples seen"
        )
    # Rungs at 1/4 and 1/2 of the budget: a trial must survive two halvings to finish. Trials
    # end themselves at their budget; `max_t` lies beyond it so ASHA never cuts one there.
    return ASHAScheduler(
        time_attr="examples",
        max_t=4 * max_examples,
        grace_period=max(1, max_examples // 4),
        reduction_factor=2,
    )


def _rank(outcomes: list[TrialOutcome], space: SearchSpace, metric: str) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        sample = dict(_flat(o.config))
        value = o.metrics.get(metric)
        rows.append(
            {
                "trial": o.trial_id,
                "status": o.status,
                metric: float(value) if value is not None else float("nan"),
                "raw_top1_error": float(o.metrics.get("raw_top1_error", float("nan"))),
                "examples": int(o.metrics.get("examples", 0)),
                "run_id": o.run_id,
                **{k: sample.get(k) for k in space.domains},
                "error": o.error,
            }
        )
    order = {"finished": 0, "stopped": 1, "failed": 2}
    rows.sort(
        key=lambda r: (
            order[r["status"]],
            r[metric] if r[metric] == r[metric] else math.inf,
        )
    )
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows


def _flat(d: dict[str, Any], prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def format_ranked(rows: list[dict[str, Any]], metric: str, keys: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    head = ["rank", "trial", "status", metric, "examples", *keys]
    table = [head] + [[cell(r.get(h)) for h in head] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    # Why each failed trial failed, where the user reads the table (ranked.json keeps it too).
    lines += [f"trial {r['trial']} failed: {r['error']}" for r in rows if r["status"] == "failed"]
    return "\n".join(lines)


def sweep(
    cfg: JobConfig,
    space: SearchSpace,
    *,
    samples: int,
    scheduler: str = "asha",
    max_concurrent: int | None = None,
    out_dir: str = "",
    address: str | None = None,
    callbacks: list[Any] | None = None,
) -> SweepResult:
    """Run a sweep of `cfg` over `space`; returns the ranked trials and the best job's YAML.

    `callbacks` are extra `ray.tune.Callback`s (progress displays, fault injection in tests)."""
    from distinception.data.shards import open_manifest
    from distinception.tracking import log_json, log_table, log_text

    if samples < 1:
        raise ConfigError(f"--samples={samples}: expected an integer >= 1")
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler={scheduler!r}: expected one of {', '.join(SCHEDULERS)}")
    p = plan(cfg, "sweep", out_dir)
    metric, out = p.metric, p.out
    train_examples = int(open_manifest(p.base.data.path).counts["train"])
    sched = make_scheduler(scheduler, p.base.run.example_budget(train_examples))

    t0 = time.perf_counter()
    params = {
        "sweep.space": space.describe(),
        "sweep.samples": samples,
        "sweep.scheduler": scheduler,
    }
    with slots(p, params, address=address, max_concurrent=max_concurrent) as run:
        outcomes = run_trials(
            run.trial_base,
            functools.partial(space.apply, run.trial_base),
            space.to_tune(),
            parent_run_id=run.parent_run_id,
            storage=str(out),
            name="tune",
            num_samples=samples,
            metric=metric,
            scheduler=sched,
            max_concurrent=run.max_concurrent,
            seed=cfg.run.seed,
            callbacks=callbacks,
        )
        ranked = _rank(outcomes, space, metric)
        (out / "ranked.json").write_text(json.dumps(ranked, indent=1, default=str))
        best = next((r for r in ranked if r[metric] == r[metric]), None)
        if best is None:
            raise RuntimeError(
                "sweep: no trial reported a validation error; see the failed trials in "
                f"{out / 'ranked.json'}"
            )
        best_cfg = space.apply(cfg, {k: best[k] for k in space.domains})
        best_cfg = best_cfg.replace(name=f"{cfg.name}-best")
        best_yaml = out / "best.yaml"
        best_yaml.write_text(
            f"# best of sweep {run.parent_run_id}: trial {best['trial']}, "
            f"{metric} {best[metric]:.4f}\n" + best_cfg.to_yaml()
        )
        log_table(p.tracking_uri, run.parent_run_id, ranked, "ranked.json")
        log_text(p.tracking_uri, run.parent_run_id, best_yaml.read_text(), "best.yaml")
        log_json(p.tracking_uri, run.parent_run_id, {"best_trial": best}, "best.json")
    parent, concurrent = run.parent_run_id, run.max_concurrent
    return SweepResult(
        parent_run_id=parent,
        out_dir=str(out),
        best_yaml=str(best_yaml),
        ranked=ranked,
        seconds=time.perf_counter() - t0,
        max_concurrent=concurrent,
    )


__all__ = ["SCHEDULERS", "SweepResult", "format_ranked", "make_scheduler", "sweep"]
