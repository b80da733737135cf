"""A Tune trial killed mid-run: the sweep goes on, the trial's MLflow run ends FAILED, its actors
and placement group are gone, and the best augment is the survivor's."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from distinception.config import apply_overrides, load_yaml
from distinception.recipes import get_recipe
from distinception.tracking import child_runs
from distinception.tune.space import build_space
from distinception.tune.sweep import sweep

pytestmark = pytest.mark.integration


class KillOneTrial(tune.Callback):
    """Kills the trainable actor of one trial (chosen by seed) at one of its first results."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.victim_index = rng.randrange(2)
        self.at_result = rng.randint(1, 2)
        self.killed: str | None = None
        self.seen: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if self.killed or trials.index(trial) != self.victim_index:
            return
        self.seen[trial.trial_id] = self.seen.get(trial.trial_id, 0) + 1
        if self.seen[trial.trial_id] >= self.at_result and not result.get("finished"):
            ray.kill(trial.temporary_state.ray_actor, no_restart=True)
            self.killed = trial.trial_id


def test_killed_trial_is_failed_and_the_sweep_completes(ray_local, tiny_data, mlflow_uri, tmp_path):
    cfg = apply_overrides(
        get_recipe("tiny"),
        [
            f"data.path={tiny_data}",
            f"tracking.tracking_uri={mlflow_uri}",
            "tracking.log_model=false",
            "run.max_examples=1500",
            "run.eval_interval_s=1",
        ],
    )
    killer = KillOneTrial(seed=3)
    result = sweep(
        cfg,
        build_space(["augment.area_min=uniform:0.5:1.0"], fixed=["optim.lr"]),
        samples=2,
        scheduler="fifo",
        max_concurrent=1,
        out_dir=str(tmp_path / "sw"),
        callbacks=[killer],
    )
    assert killer.killed, "the fault was injected"
    status = {r["trial"]: r["status"] for r in result.ranked}
    assert status[killer.killed] == "failed"
    assert sorted(status.values()) == ["failed", "finished"]
    assert result.ranked[0]["status"] == "finished"  # the survivor is the best trial
    runs = child_runs(mlflow_uri, result.parent_run_id)
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]
    assert MlflowClient(mlflow_uri).get_run(result.parent_run_id).info.status == "FINISHED"
    # best.yaml is the survivor's job, even though the killed trial reported a result first.
    survivor = next(r for r in result.ranked if r["status"] == "finished")
    header = Path(result.best_yaml).read_text().splitlines()[0]
    assert f"trial {survivor['trial']}," in header, header
    best = load_yaml(result.best_yaml)
    assert best.augment.area_min == pytest.approx(survivor["augment.area_min"])
    # The killed trial took its shards, replicas, averager and placement group with it.
    assert _settles(lambda: not _alive_training_actors() and not _live_placement_groups()), (
        _alive_training_actors(),
        _live_placement_groups(),
    )


def _alive_training_actors() -> list[str]:
    from ray._private import state

    return [
        a["ActorClassName"]
        for a in state.actors().values()
        if a["State"] != "DEAD"
        and a["ActorClassName"].split(".")[-1] in {"ShardActor", "ReplicaActor", "AveragerActor"}
    ]


def _live_placement_groups() -> list[str]:
    return [
        pg_id for pg_id, pg in ray.util.placement_group_table().items() if pg["state"] != "REMOVED"
    ]


def _settles(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True
