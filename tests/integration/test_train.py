"""The whole parameter server on a real local Ray, real Parquet shards and a real MLflow store."""

from __future__ import annotations

import json
import os
import statistics

import mlflow
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from quadrants import quadrant_job as tiny_cfg

from distinception.ps.callbacks import Callback
from distinception.ps.coordinator import Coordinator
from distinception.tracking import MlflowCallback
from distinception.training import train

pytestmark = pytest.mark.integration


def test_training_learns_and_is_recorded(ray_local, easy_data, mlflow_uri):
    cfg = tiny_cfg(
        easy_data,
        mlflow_uri,
        run={"max_examples": 8000, "eval_interval_s": 3.0},
        tracking={"log_model": True},
    )
    coordinator = Coordinator(cfg, [MlflowCallback(cfg)])
    result = coordinator.run()

    assert result.examples >= 8000
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) >= 3 and losses[-1] < losses[0] - 0.2, losses
    # Both replicas contributed accepted updates; staleness was recorded on the shards.
    assert sorted(result.replica_stats) == [0, 1]
    for stats in result.replica_stats.values():
        assert stats["counters"]["accepted"] > 10
        # On one node, weights and gradients went through shared memory, and nothing is left.
        assert stats["counters"]["pushes_shared"] > 10
        assert stats["counters"]["pulls_shared"] > 10
    assert coordinator.shm_dir and not os.path.exists(coordinator.shm_dir)
    assert sum(result.staleness_hist.values()) > 20
    assert not result.refused
    # Polyak weights differ from the raw ones and score at least as well (within noise).
    f = result.final
    assert f["polyak_samples"] > 5
    # 4 classes, chance 0.75. Measured 0.0 Polyak and raw (2026-12-01). Half the accuracy
    # (0.5) fails.
    assert f["polyak_top1_error"] <= 0.1
    assert f["polyak_top1_error"] <= f["raw_top1_error"] + 0.1

    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-quadrants-bn0.125-32px"  # recipe, data set, model
    # What the MLflow UI shows about the run: its data set, source and description.
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "quadrants" and data.dataset.digest == _manifest_digest(easy_data)
    assert json.loads(data.dataset.source) == {"uri": easy_data}
    assert json.loads(data.dataset.profile)["splits"] == {"train": 384, "val": 256}
    assert run.data.tags["mlflow.source.name"].startswith("distinception")
    assert len(run.data.tags["mlflow.source.git.commit"]) == 40  # run from this checkout
    assert "bn GoogLeNet at width 0.125" in run.data.tags["mlflow.note.content"]
    # The machine's load beside the training curves, from MLflow's system-metrics monitor.
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        run.data.metrics
    )
    assert run.data.params["ps.num_replicas"] == "2"
    assert run.data.params["model.variant"] == "bn"
    # Grouped by prefix, so the UI charts training, validation and the server apart.
    for key in (
        "train/loss",
        "train/examples_per_s",
        "train/lr",
        "ps/updates_per_s",
        "ps/staleness_p95",
        "val/polyak_top1_error",
        "val/raw_top5_error",
        "val/top1_error",
        "val/final_top1_error",
        "faults/replica_failures",
    ):
        assert key in run.data.metrics, key
    # The headline is the served (Polyak) weights' error.
    assert run.data.metrics["val/final_top1_error"] == f["polyak_top1_error"]
    assert len(client.get_metric_history(result.run_id, "train/loss")) >= 3
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "result.json", "training.png"} <= artifacts

    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    x = torch.randn(3, 3, 32, 32)
    logits = model(x)  # the exported inference graph, any batch size
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()


def test_a_torchvision_mobilenet_trains_through_the_parameter_server(
    ray_local, easy_data, mlflow_uri
):
    """Another classifier, at a width of its own, on the same shards, replicas and averager: its
    flat vector is cut across two shards mid-parameter, and the averager recomputes its
    BatchNorm statistics before it scores the Polyak weights (with the recompute turned off,
    this job and ResNet-18's ended at 0.72-0.75 error, chance). The digits test trains a
    ResNet-18 from the command line."""
    arch = "torchvision:mobilenet_v3_small"
    cfg = tiny_cfg(
        easy_data,
        mlflow_uri,
        model={"arch": arch, "width": 0.5},
        run={"max_examples": 2500},
        tracking={"log_model": True},
    )
    result = train(cfg)

    f = result.final
    assert result.examples >= 2500 and f["polyak_samples"] > 5
    # 4 classes, chance 0.75. Measured 0.004 Polyak and raw after 2,000 examples (2026-12-03).
    # Half the accuracy (0.5) fails.
    assert f["polyak_top1_error"] <= 0.1 and f["raw_top1_error"] <= 0.1

    run = MlflowClient(mlflow_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tiny-quadrants-mobilenet_v3_small0.5-32px"
    assert run.data.params["model.arch"] == arch
    assert f"{arch} at width 0.5" in run.data.tags["mlflow.note.content"]
    mlflow.set_tracking_uri(mlflow_uri)
    model = mlflow.pytorch.load_model(f"runs:/{result.run_id}/model")
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 4)


def _manifest_digest(path: str) -> str:
    """What names a data set's contents: its classes and every shard's name, rows and bytes, as
    the manifest lists them (sha256, 16 hex digits). Another data set has another digest."""
    import hashlib

    from distinception.data.shards import open_manifest

    m = open_manifest(path)
    files = {k: [(f.name, f.rows, f.bytes) for f in v] for k, v in m.files.items()}
    doc = json.dumps({"classes": m.classes, "files": files}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def test_bad_pushes_are_refused_through_the_real_actor(ray_local, easy_data, mlflow_uri):
    import numpy as np

    from distinception.ps.actors import ShardSpec, remote_shard
    from distinception.ps.layout import ParamLayout

    cfg = tiny_cfg(easy_data, mlflow_uri)
    layout = ParamLayout.from_module(torch.nn.Linear(4, 2))
    init = ray.put(np.zeros(layout.total, dtype=np.float32))
    spec = ShardSpec(0, 0, layout.total, layout, cfg, examples_per_epoch=100)
    shard = remote_shard(cfg).remote(spec, [init])
    info = ray.get(shard.ready.remote())
    good = np.ones(layout.total, dtype=np.float32)
    cases = {
        "nonfinite": (np.full(layout.total, np.nan, dtype=np.float32), layout.fingerprint),
        "length": (np.ones(layout.total + 1, dtype=np.float32), layout.fingerprint),
        "layout": (good, "0123456789abcdef"),
    }
    for reason, (grad, fp) in cases.items():
        r = ray.get(shard.push.remote(grad, 0, 1, fp, info["incarnation"]))
        assert not r["accepted"] and r["reason"] == reason
    r = ray.get(shard.push.remote(good, 0, 1, layout.fingerprint, info["incarnation"]))
    assert r["accepted"]
    stats = ray.get(shard.stats.remote())
    assert stats["version"] == 1
    assert stats["refused"] == {"nonfinite": 1, "length": 1, "layout": 1}
    ray.kill(shard)


def test_bad_shared_memory_pushes_are_refused_through_the_real_actor(
    ray_local, easy_data, mlflow_uri, tmp_path
):
    import numpy as np

    from distinception.ps.actors import ShardSpec, remote_shard
    from distinception.ps.layout import ParamLayout
    from distinception.ps.transport import shm

    cfg = tiny_cfg(easy_data, mlflow_uri)
    layout = ParamLayout.from_module(torch.nn.Linear(4, 2))
    init = ray.put(np.zeros(layout.total, dtype=np.float32))
    job = shm.job_dir()
    spec = ShardSpec(0, 0, layout.total, layout, cfg, examples_per_epoch=100, shm_dir=job)
    shard = remote_shard(cfg).remote(spec, [init])
    link = ray.get(shard.attach.remote())
    assert link["path"].startswith(job + os.sep)
    slot = shm.SharedVector(os.path.join(job, "replica-0-t-0.g"), layout.total, create=True)
    short = shm.SharedVector(os.path.join(job, "replica-1-t-0.g"), layout.total - 1, create=True)
    outside = tmp_path / "replica-0-x.g"
    outside.write_bytes(b"\0" * (shm.HEADER + layout.nbytes))

    def push(path: str) -> dict:
        return ray.get(
            shard.push_shared.remote(path, 0, 1, layout.fingerprint, link["incarnation"])
        )

    slot.values.fill_(float("inf"))
    assert push(slot.path)["reason"] == "nonfinite"
    assert push(short.path)["reason"] == "length"
    for path in (str(outside), os.path.join(job, "replica-9-missing.g"), "/etc/passwd"):
        assert push(path)["reason"] == "source", path
    slot.values.fill_(1.0)
    assert push(slot.path)["accepted"]
    weights = shm.SharedVector(link["path"], layout.total)
    with weights.reading():  # the update landed in the file same-node replicas read
        assert weights.version == 1
        torch.testing.assert_close(weights.values, torch.full((layout.total,), -cfg.optim.lr))
    # The doorbell (how same-node replicas push) takes the same request by name.
    bell = shm.Doorbell(link["bell"], timeout=60)
    request = {"path": slot.path, "version": 1, "examples": 1}
    request |= {"fingerprint": layout.fingerprint, "incarnation": link["incarnation"]}
    bell.ring(request)
    assert bell.answer() == {"accepted": True, "reason": "", "staleness": 0, "version": 2}
    bell.ring({"path": slot.path})
    assert bell.answer()["reason"] == "source"
    bell.close()
    stats = ray.get(shard.stats.remote())
    assert stats["version"] == 2
    assert stats["refused"] == {"nonfinite": 1, "length": 1, "source": 4}
    assert ray.get(shard.release.remote())
    assert not os.path.exists(job)
    ray.kill(shard)


def test_object_store_stays_flat_over_many_versions(ray_local, easy_data, mlflow_uri):
    # Replicas on other nodes than their shards pull every version through the object store.
    cfg = tiny_cfg(
        easy_data,
        mlflow_uri,
        run={"max_examples": 6000, "eval_interval_s": 1000.0},
        transport={"channel": "object_store"},
    )
    result = Coordinator(cfg, [Callback()]).run()
    assert all("pulls_shared" not in s["counters"] for s in result.replica_stats.values())
    used = [h["object_store_bytes"] for h in result.history if "object_store_bytes" in h]
    assert len(used) >= 4, result.history
    assert result.updates > 200
    # Hundreds of versions were published; had each stayed in the store this would hold
    # updates x vector bytes. It holds a bounded handful, and does not grow over the run.
    from distinception.ps.replica import build_flat_model

    vector_bytes = build_flat_model(cfg.model, 4)[3].nbytes
    published = result.updates * vector_bytes
    assert max(used) < 0.15 * published, (max(used), published)
    # Medians, not means: one sample can catch a burst of pulls in flight (30.8 MB once, between
    # samples of 3-10 MB, on a loaded machine); versions kept would raise every later sample.
    half = len(used) // 2
    first, second = statistics.median(used[:half]), statistics.median(used[half:])
    assert second <= 2 * first + 8 * 1024 * 1024, used


def test_warm_start_bounded_staleness_and_bf16_transfer(ray_local, easy_data, mlflow_uri):
    """DistBelief's warm start (one replica first), SSP's bound, and half-size transfers."""
    cfg = tiny_cfg(
        easy_data,
        mlflow_uri,
        ps={"warm_start_updates": 40, "staleness": "bound:0"},
        transport={"transfer_dtype": "bfloat16"},
        optim={"optimizer": "adagrad", "lr": 0.02},
        run={"max_examples": 3000},
    )
    result = Coordinator(cfg, [Callback()]).run()
    assert result.examples >= 3000
    # Replica 1 joined only after the warm start, so it saw fewer examples than replica 0.
    r0, r1 = result.replica_stats[0], result.replica_stats[1]
    assert r1["counters"]["pushes"] < r0["counters"]["pushes"]
    # With a bound of 0, concurrent replicas' stale pushes are refused and counted.
    assert result.refused.get("stale", 0) > 0
    assert set(result.staleness_hist) == {0}
    # Measured 0.0 Polyak and raw (2026-12-01; chance 0.75). How many pushes a bound of 0
    # refuses depends on the machine's timing, so more slack; half the accuracy (0.5) fails.
    assert result.final["polyak_top1_error"] <= 0.2


def test_a_straggler_replica_reads_a_fraction_of_what_the_others_read(ray_local, easy_data):
    """`straggler` slows replica 0 only; the run is not slowed to its pace (asynchrony)."""
    cfg = tiny_cfg(
        easy_data,
        "",
        ps={"num_replicas": 2},
        placement={"replica_cpus": 0.5},
        run={"max_examples": 1600, "eval_interval_s": 1e9, "progress": False},
    )
    result = train(cfg, track=False, straggler=4.0)
    share = 4 * 96 // 2  # each replica's rows of the quadrant set per epoch
    rows = {
        i: s["position"]["epoch"] * share + s["position"]["offset"]
        for i, s in result.replica_stats.items()
    }
    assert set(rows) == {0, 1} and result.examples >= 1600
    assert rows[0] < 0.6 * rows[1], rows


def test_evaluations_scored_after_training_keep_their_moments(ray_local, easy_data):
    """`run.eval_scoring: after` (the convergence benchmark's): each evaluation holds the
    weights of its moment, and all are scored once training has ended, each reported at the
    examples and seconds it was asked for; so none is reported while replicas train."""
    cfg = tiny_cfg(
        easy_data,
        "",
        run={"max_examples": 3000, "eval_interval_s": 0.5, "eval_scoring": "after"},
    )
    result = train(cfg, track=False)
    kinds = ["eval" if "raw_top1_error" in h else "stats" for h in result.history]
    points = [h for h in result.history if "raw_top1_error" in h]
    assert len(points) >= 2, result.history
    # Reported after every statistic of the training loop: scored once training had ended.
    assert "stats" in kinds and kinds.index("eval") > len(kinds) - 1 - kinds[::-1].index("stats")
    examples = [h["examples"] for h in points]
    seconds = [h["seconds"] for h in points]
    assert examples == sorted(examples) and examples[-1] <= result.examples
    assert seconds == sorted(seconds) and seconds[-1] < result.seconds
    assert all(0 <= h["polyak_top1_error"] <= 1 for h in points)
    assert result.faults.get("eval_failed", 0) == 0
    # Held weights of different moments: the first is scored worse than the end (chance 0.75;
    # the quadrant set is learned within these examples).
    assert points[0]["raw_top1_error"] > result.final["raw_top1_error"], points
