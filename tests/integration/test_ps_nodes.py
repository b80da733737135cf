"""Shards on several PS nodes: a Ray cluster of three nodes on this machine (each its own raylet
and object store, so replicas reach the shards through Ray's object manager, as across
machines): the shards spread evenly over the nodes that have the `ps` resource, and a PS node
lost mid-run costs only the updates since the last checkpoint."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import ray
from quadrants import quadrant_job

from distinception.ps.callbacks import Callback
from distinception.ps.coordinator import Coordinator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ps_cluster():
    """A head with the driver and the replicas (`replica`), and two PS nodes (`ps`): the
    cluster `distinception bench nodes` measures on."""
    from distinception.bench.nodes import fake_cluster

    with fake_cluster() as (cluster, nodes):
        yield cluster, nodes


def _node_of(actor) -> str:
    return ray.get(
        actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()),
        timeout=120,
    )


class LoseANode(Callback):
    """Once the run has seen `after` examples and a checkpoint is written: note where each
    shard runs, then remove the PS node holding shard 0, abruptly."""

    def __init__(self, cluster, nodes, after: int) -> None:
        self.cluster, self.nodes, self.after = cluster, nodes, after
        self.coordinator: Coordinator | None = None
        self.checkpointed = False
        self.before: list[str] = []
        self.after_end: list[str] = []
        self.fired_at: int | None = None

    def on_checkpoint(self, directory, progress):
        self.checkpointed = progress["examples"] > 0

    def on_metrics(self, metrics, step):
        if self.fired_at is not None or step < self.after or not self.checkpointed:
            return
        self.fired_at = step
        self.before = [_node_of(s) for s in self.coordinator.shards]
        victim = next(n for n in self.nodes if n.node_id == self.before[0])
        self.cluster.remove_node(victim, allow_graceful=False)
        time.sleep(1.0)

    def on_end(self, result, model):
        self.after_end = [_node_of(s) for s in self.coordinator.shards]  # before the teardown


def test_shards_spread_over_ps_nodes_and_a_lost_one_is_recovered(
    ps_cluster, easy_data, mlflow_uri, tmp_path
):
    cluster, nodes = ps_cluster
    cfg = quadrant_job(
        easy_data,
        mlflow_uri,
        ps={"num_shards": 4, "num_replicas": 2},
        placement={
            "shard_resources": {"ps": 1},
            "replica_resources": {"replica": 1},
            "shard_cpus": 0.1,
            "averager_cpus": 0.1,
        },
        run={"max_examples": 6000, "checkpoint_interval_s": 1.0},
    )
    hooks = LoseANode(cluster, nodes, after=2000)
    coordinator = Coordinator(cfg, [hooks], checkpoint_dir=str(tmp_path / "ckpt"))
    hooks.coordinator = coordinator
    result = coordinator.run()

    ps_ids = {n.node_id for n in nodes}
    # Spread: two shards on each PS node (Ray's default would have filled one first).
    assert set(hooks.before) <= ps_ids and sorted(Counter(hooks.before).values()) == [2, 2]
    # The lost node's two shards came back on the other one, from the checkpoint, and the job
    # finished its budget and learned (chance is 0.75).
    survivor = (ps_ids - {hooks.before[0]}).pop()
    assert hooks.after_end == [survivor] * 4
    assert result.faults.get("shard_restarts", 0) >= 2, result.faults
    assert result.examples >= 6000
    assert result.final["polyak_top1_error"] <= 0.1, result.final
