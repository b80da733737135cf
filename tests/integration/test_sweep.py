"""A real sweep on a real local Ray, recorded in a real `mlflow server` checked over REST."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distinception.config import apply_overrides, load_yaml
from distinception.recipes import get_recipe
from distinception.tune.space import build_space
from distinception.tune.sweep import sweep

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    """`mlflow server` on 127.0.0.1 with a sqlite backend and artifacts in a temporary dir."""
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                pytest.fail("mlflow server exited: " + (tmp_path / "mlflow-server.log").read_text())
        else:
            pytest.fail("mlflow server did not answer /health")
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
        log.close()


def _rest(url: str, path: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        url + "/api/2.0/mlflow/" + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_two_trial_sweep_ranks_writes_best_yaml_and_nests_runs(
    ray_local, tiny_data, mlflow_server, tmp_path
):
    cfg = apply_overrides(
        get_recipe("tiny"),
        [
            f"data.path={tiny_data}",
            f"tracking.tracking_uri={mlflow_server}",
            "tracking.experiment=sweep-test",
            "tracking.log_model=false",
            "run.max_examples=1200",
            "run.eval_interval_s=1.5",
        ],
    )
    space = build_space(["recipe.area_min=uniform:0.3:1.0"], fixed=["ps.lr"])
    result = sweep(cfg, space, samples=2, scheduler="asha", out_dir=str(tmp_path / "sw"))

    # Ranked: every trial accounted for, the best first, and its job trains as it is.
    assert len(result.ranked) == 2
    assert {r["status"] for r in result.ranked} <= {"finished", "stopped"}
    assert result.ranked[0]["status"] == "finished"
    best = load_yaml(result.best_yaml)
    assert best.recipe.area_min == pytest.approx(result.ranked[0]["recipe.area_min"])
    assert best.recipe.aspect_min == pytest.approx(1 / best.recipe.aspect_max)
    assert best.ps.lr == cfg.ps.lr  # fixed with --set, not swept
    assert best.data.path == tiny_data

    # Through the server's REST API: one parent, two children nested under it.
    exp = _rest(mlflow_server, "experiments/get-by-name?experiment_name=sweep-test")
    exp_id = exp["experiment"]["experiment_id"]
    runs = _rest(mlflow_server, "runs/search", {"experiment_ids": [exp_id], "max_results": 100})
    runs = runs["runs"]
    by_id = {r["info"]["run_id"]: r for r in runs}
    parent = by_id[result.parent_run_id]
    assert parent["info"]["status"] == "FINISHED"
    parent_tags = {t["key"]: t["value"] for t in parent["data"]["tags"]}
    assert parent_tags["distinception.kind"] == "sweep"
    children = [
        r
        for r in runs
        if any(
            t["key"] == "mlflow.parentRunId" and t["value"] == result.parent_run_id
            for t in r["data"].get("tags", [])
        )
    ]
    assert len(children) == 2
    assert {c["info"]["run_id"] for c in children} == {r["run_id"] for r in result.ranked}
    for child in children:
        assert child["info"]["status"] in ("FINISHED", "KILLED")
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        row = next(r for r in result.ranked if r["run_id"] == child["info"]["run_id"])
        assert float(params["recipe.area_min"]) == pytest.approx(row["recipe.area_min"])
        metrics = {m["key"] for m in child["data"]["metrics"]}
        assert {"polyak_top1_error", "raw_top1_error"} <= metrics
        if child["info"]["status"] == "FINISHED":  # a stopped trial may predate its first loss
            assert {"loss", "final_polyak_top1_error"} <= metrics
            history = _rest(
                mlflow_server,
                "metrics/get-history?run_id={}&metric_key=loss".format(child["info"]["run_id"]),
            )
            assert len(history["metrics"]) >= 1
    finished = [c for c in children if c["info"]["status"] == "FINISHED"]
    assert finished, "the best trial ran to its budget"
    assert Path(result.out_dir, "ranked.json").is_file()
