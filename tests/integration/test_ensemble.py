"""A 3-member ensemble trained as Tune trials by its job spec on a real head, then scored as
Table 3 (models x crops)."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient
from ray_heads import submit_followed

from distinception.evaluation import evaluate_target

pytestmark = pytest.mark.integration


def test_three_member_ensemble_then_table3_grid(jobs_head, easy_data, mlflow_uri, tmp_path):
    # The quadrant classes change under a mirror, so no member flips; one samples crops.
    crops = tmp_path / "crops.yaml"
    crops.write_text("augment: {area_min: 0.7, flip: false, interpolation: bilinear}\n")
    out = tmp_path / "ens"
    # The shipped job spec, submitted to a real head as a user submits it, at a tiny budget; its
    # members are trials on the head's cluster. What it did is read back from its output
    # directory and MLflow. Each member is one shard and one replica: the ensemble is what is
    # under test here (the killed-trial sweep test's trials run 2 shards and 2 replicas), and every
    # actor process costs seconds of start-up.
    proc = submit_followed(
        jobs_head,
        "ensemble.yaml",
        *("--recipe", "tiny", "--set", f"data.path={easy_data}"),
        *("--set", "ps.num_shards=1", "--set", "ps.num_replicas=1"),
        *("--set", f"tracking.tracking_uri={mlflow_uri}", "--set", "run.max_examples=1500"),
        *("--set", "run.eval_interval_s=3", "--set", "run.init_seed=7"),
        *("--members", "3", "--augments", f"none,{crops}", "--max-concurrent", "1"),
        *("--out", str(out)),
        mlflow_uri=mlflow_uri,
    )
    result = SimpleNamespace(**json.loads((out / "ensemble.json").read_text()))
    assert [m["member"] for m in result.members] == [0, 1, 2]
    assert all(m["status"] == "finished" for m in result.members)
    assert [m["augment"] for m in result.members] == ["none", "crops", "none"]
    # The members as printed: one line each, with its status, augment and run.
    assert f"ensemble {result.parent_run_id}: 3 members" in proc.stdout
    for m in result.members:
        line = next(x for x in proc.stdout.splitlines() if f"member {m['member']} " in x)
        assert "finished" in line and f"augment {m['augment']} " in line, line
        assert line.endswith(f"run {m['run_id']}"), line
    assert f"distinception evaluate {result.parent_run_id} " in proc.stdout

    client = MlflowClient(mlflow_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["distinception.kind"] == "ensemble"
    seeds, init_seeds = set(), set()
    for m in result.members:
        run = client.get_run(m["run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id
        seeds.add(run.data.params["run.seed"])
        init_seeds.add(run.data.params["run.init_seed"])
    assert len(seeds) == 3 and init_seeds == {"7"}  # own data order, same initial weights
    # Each member is a version of one registered model, tagged with how it was trained.
    versions = client.search_model_versions("name = 'tiny-ensemble'")
    assert sorted(v.run_id for v in versions) == sorted(m["run_id"] for m in result.members)
    area = {v.run_id: v.tags["augment.area_min"] for v in versions}
    assert area[result.members[1]["run_id"]] == "0.7"  # the crops member's own augment
    assert all(v.tags["recipe"].startswith("tiny-member") for v in versions)

    # Evaluated later, by the ensemble's run id, through the CLI as a user would.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distinception.cli",
            "evaluate",
            result.parent_run_id,
            "--crops",
            "center,ten",
            "--tracking-uri",
            mlflow_uri,
            "--limit",
            "48",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["kind"] == "ensemble" and report["images"] == 48
    grid = {(r["models"], r["crops"]): r for r in report["rows"]}
    assert set(grid) == {(k, c) for k in (1, 2, 3) for c in (1, 10)}
    assert all(grid[k, c]["cost"] == k * c for k, c in grid)
    assert all(0.0 <= r["top1_error"] <= 1.0 for r in report["rows"])
    # The members learned (chance is 0.75). Mirrored crops swap the quadrant classes, so only the
    # center crop is a fair score on this set; the built-in set is mirror-invariant.
    # Measured 0.0 for 1, 2 and 3 members (2026-12-01; chance 0.75): half the accuracy fails.
    assert grid[3, 1]["top1_error"] <= 0.1
    assert set(report["patterns"]["top1"]) == {"crops", "models"}
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"ensemble.json", "table3.json", "table3.txt", "table3.png"} <= artifacts

    # One member alone, by its model URI, with the paper's 144 crops.
    single = evaluate_target(
        result.members[0]["model_uri"], ["paper144"], uri=mlflow_uri, limit=8, log=False
    )
    assert single["kind"] == "model" and [r["crops"] for r in single["rows"]] == [144]


def test_evaluate_rejects_unknown_targets_and_crops(mlflow_uri):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distinception.cli",
            "evaluate",
            "0123456789abcdef",
            "--tracking-uri",
            mlflow_uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "TARGET='0123456789abcdef': expected a run id" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distinception.cli",
            "evaluate",
            "x",
            "--crops",
            "center,five",
            "--tracking-uri",
            mlflow_uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "--crops item 'five'" in proc.stderr
