"""Elastic replicas: replicas join as capacity appears and the run survives losing them.

The first test uses the module's local Ray (two CPUs: room for two of three replicas) and kills a
replica mid-run. The second runs a fake multi-node autoscaling cluster (`cluster/local.yaml`):
its head holds no replica at all, so every replica needs a node the autoscaler adds; one of those
nodes is killed mid-run and the job carries on to the end with the replicas left. (Refilling the
freed slot is shown by the first test: the fake provider replaces a dead node only after its
heartbeat timeout, too slowly for a short test.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from as_typed import distinception
from mlflow.tracking import MlflowClient
from ray_heads import ROOT, free_port, kill_pids, pids_using

from distinception.config import apply_overrides
from distinception.ps.callbacks import Callback
from distinception.ps.coordinator import Coordinator
from distinception.recipes import get_recipe

pytestmark = pytest.mark.integration


class KillOneReplica(Callback):
    """Kills one replica (for good: no restart) once two are training."""

    def __init__(self) -> None:
        self.coordinator: Coordinator | None = None
        self.killed: int | None = None
        self.replicas_seen: list[float] = []

    def on_metrics(self, metrics, step) -> None:
        import ray

        if "replicas" not in metrics:
            return
        self.replicas_seen.append(metrics["replicas"])
        if self.killed is None and metrics["replicas"] >= 2:
            self.killed, actor = next(iter(self.coordinator.replicas.items()))
            ray.kill(actor, no_restart=True)


def test_elastic_run_fills_capacity_and_survives_a_lost_replica(ray_local, tiny_data):
    # Two CPUs: shards 0.2 + averager 0.1 + 0.8 per replica leaves room for two replicas of the
    # three wanted; the third waits (without blocking the loop) until a kill frees room.
    cfg = apply_overrides(
        get_recipe("tiny"),
        [
            f"data.path={tiny_data}",
            "placement.elastic=true",
            "ps.num_replicas=3",
            "placement.min_replicas=2",
            "placement.replica_cpus=0.8",
            # Long enough on a fast, quiet machine for the refill to start and join (a fresh
            # replica takes a few seconds to import torch and build its model).
            "run.max_examples=6000",
        ],
    )
    hooks = KillOneReplica()
    coordinator = Coordinator(cfg, [hooks])
    hooks.coordinator = coordinator
    result = coordinator.run()
    assert hooks.killed is not None
    assert result.faults["replicas_lost"] >= 1
    assert result.examples >= 6000
    joined = [h["replicas_joined"] for h in result.history if "replicas_joined" in h]
    assert joined[-1] >= 3  # two at the start, one more after the kill freed room
    assert max(hooks.replicas_seen) == 2  # never more than fit
    assert not coordinator.pool.starting  # nothing left waiting for capacity


def _raylets_of_fake_workers(temp_dir: str) -> list[int]:
    """Raylets of the nodes the autoscaler added: sockets raylet.1, raylet.2, ... (the head's
    is `raylet`)."""
    pids = []
    for pid in pids_using(temp_dir):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[0].endswith(b"/raylet") and any(
            a.startswith(b"--raylet_socket_name=") and not a.endswith(b"/raylet") for a in cmd
        ):
            pids.append(pid)
    return pids


def _metric(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in client.get_metric_history(run_id, key)]


@pytest.fixture
def autoscaling_head(start_head, tmp_path_factory):
    """A new fake multi-node cluster whose autoscaler adds up to 3 `replica_node`s (1 CPU and 1
    `replica` each) to a head with 1 CPU and no `replica`. New for each test: a node killed by
    one test stays listed by the fake provider, and one test's nodes would serve the next."""
    # The fake provider starts its nodes against GCS port 6379 unless the config names the
    # head's address (`provider.gcs_address`): a copy of cluster/local.yaml names a free port.
    port = free_port()
    config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
    autoscaling = tmp_path_factory.mktemp("autoscaling") / "local.yaml"
    autoscaling.write_text(yaml.safe_dump(config))
    return start_head(
        [
            "--num-cpus=1",
            '--resources={"ps": 8}',
            "--include-dashboard=false",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--autoscaling-config={autoscaling}",
        ],
        port=port,
        wait_port=port,
        extra_env={
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "AUTOSCALER_HEARTBEAT_TIMEOUT_S": "10",
            # Notice a dead node in seconds rather than about a minute.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        },
    )


def test_autoscaling_cluster_adds_nodes_and_survives_losing_one(
    autoscaling_head, tiny_data, mlflow_uri, tmp_path
):
    head = autoscaling_head
    driver_log = tmp_path / "driver.log"
    with open(driver_log, "w") as out:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distinception.cli",
                "train",
                "--address",
                head.gcs_address,
                "--recipe",
                "tiny",
                "--set",
                f"data.path={tiny_data}",
                "--set",
                f"tracking.tracking_uri={mlflow_uri}",
                "--set",
                "tracking.log_model=false",
                "--set",
                "placement.elastic=true",
                "--set",
                "ps.num_replicas=3",
                "--set",
                "placement.min_replicas=1",
                "--set",
                "placement.replica_resources={replica: 1}",
                "--set",
                "placement.shard_resources={ps: 1}",
                "--set",
                "run.max_examples=0",
                "--set",
                "run.max_seconds=35",
            ],
            cwd=tmp_path,
            env=head.env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        client = MlflowClient(mlflow_uri)
        run_id, killed = None, None
        deadline = time.monotonic() + 400
        while driver.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
            if run_id is None:
                exp = client.get_experiment_by_name("distinception") if _db(mlflow_uri) else None
                runs = client.search_runs([exp.experiment_id]) if exp else []
                run_id = runs[0].info.run_id if runs else None
                continue
            if killed is None and max(_metric(client, run_id, "ps/replicas"), default=0) >= 2:
                workers = _raylets_of_fake_workers(head.temp_dir)
                assert workers, "replicas run, so worker nodes must exist"
                killed = workers[0]
                os.kill(killed, signal.SIGKILL)  # the node is gone, as a preempted VM would be
        if driver.poll() is None:
            driver.kill()
            pytest.fail("the run did not finish: " + driver_log.read_text()[-3000:])
    finally:
        if driver.poll() is None:
            driver.kill()
        kill_pids([driver.pid], signal.SIGKILL)
    out = driver_log.read_text()
    assert driver.returncode == 0, out[-3000:]
    assert killed is not None, "never saw two replicas training: " + out[-3000:]
    # Before starting, the job waited for a node that could hold its first replica, and said so.
    assert "distinception: waiting for the autoscaler: " in out and "replica 0/1" in out, out

    monitor = (head.session_logs / "monitor.log").read_text()
    assert "Adding" in monitor and "replica_node" in monitor  # the autoscaler added nodes

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    replicas = _metric(client, run_id, "ps/replicas")
    assert max(replicas) >= 2  # more replicas than the head could hold (none) contributed
    assert max(_metric(client, run_id, "ps/replica_nodes")) >= 2  # on different nodes
    result = json.loads(
        Path(client.download_artifacts(run_id, "result.json", str(tmp_path))).read_text()
    )
    assert result["faults"]["replicas_lost"] >= 1  # the killed node's replica


def _db(uri: str) -> bool:
    return Path(uri.removeprefix("sqlite:///")).exists()


def test_a_job_the_autoscaler_cannot_hold_waits_with_progress_then_fails_in_one_line(
    autoscaling_head, tiny_data, tmp_path
):
    """Five 1-CPU replicas need five `replica_node`s; the autoscaler may add three."""
    started = time.monotonic()
    proc = distinception(
        *("train", "--address", autoscaling_head.gcs_address, "--recipe", "tiny"),
        *("--set", f"data.path={tiny_data}"),
        *("--set", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"),
        *("--set", "ps.num_replicas=5", "--set", "placement.replica_cpus=1"),
        *(
            "--set",
            "placement.replica_resources={replica: 1}",
            "--set",
            "placement.shard_resources={ps: 1}",
        ),
        code=2,
        env=autoscaling_head.env,
        cwd=tmp_path,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    waiting = [
        line for line in lines if line.startswith("distinception: waiting for the autoscaler")
    ]
    assert waiting and "replica " in waiting[0] and "/5" in waiting[0], proc.stderr[-3000:]
    last = lines[-1]
    assert last.startswith("distinception: error: the job's actors ask for "), proc.stderr[-3000:]
    assert "the autoscaler started no node for it" in last and "lower ps.num_replicas" in last
    assert "Traceback" not in proc.stderr and " INFO " not in proc.stderr  # no Ray notices
    # It gave up on its own, well before the test's limit, once no node was coming.
    assert time.monotonic() - started < 240
