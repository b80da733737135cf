"""A real sweep, submitted as its job spec to a real Ray head and recorded in a real `mlflow
server`: checked over REST, then compared in the MLflow UI in a real browser as a user compares
trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from browser import chromium, click, compared_metrics, table_row, wait_for
from ray_heads import free_port, submit_followed

from distinception.config import load_yaml

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on 127.0.0.1 with a sqlite backend and artifacts in a temporary dir."""
    tmp_path = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
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
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine; never leave it behind
            os.killpg(proc.pid, signal.SIGKILL)
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


GRID = [0.01, 0.02]


@pytest.fixture(scope="module")
def swept(jobs_head, tiny_data, mlflow_server, tmp_path_factory):
    """The shipped sweep spec, submitted to a real head as a user submits it: the crop area
    sampled, the learning rate over a grid (two trials), recorded in the server. What it did is
    read back from its output directory: (printed output, result). Each trial's parameter server
    is one shard and one replica: the sweep is under test here, and every actor process costs
    seconds of start-up (the killed-trial test runs trials of the full layout)."""
    out = tmp_path_factory.mktemp("sweep") / "sw"
    proc = submit_followed(
        jobs_head,
        "sweep.yaml",
        *("--recipe", "tiny", "--set", f"data.path={tiny_data}"),
        *("--set", "ps.num_shards=1", "--set", "ps.num_replicas=1"),
        *("--set", f"tracking.tracking_uri={mlflow_server}"),
        *("--set", "tracking.experiment=sweep-test", "--set", "tracking.log_model=false"),
        *("--set", "run.max_examples=1200", "--set", "run.eval_interval_s=0.5"),
        *("--set", "augment.photometric=0.1"),  # fixed: not swept
        *("--space", "augment.area_min=uniform:0.3:1.0"),
        *("--space", "optim.lr=grid:" + ",".join(str(lr) for lr in GRID)),
        *("--samples", "1", "--scheduler", "asha", "--out", str(out)),
        mlflow_uri=mlflow_server,
    )
    parent = proc.stdout.split("MLflow parent run ")[1].split()[0]
    result = SimpleNamespace(
        ranked=json.loads((out / "ranked.json").read_text()),
        parent_run_id=parent,
        best_yaml=str(out / "best.yaml"),
        out_dir=str(out),
    )
    return proc.stdout, result


def test_two_trial_sweep_ranks_writes_best_yaml_and_nests_runs(swept, tiny_data, mlflow_server):
    out, result = swept
    # Ranked: every trial accounted for, the best first, and its job trains as it is.
    assert len(result.ranked) == 2
    assert {r["status"] for r in result.ranked} <= {"finished", "stopped"}, out[-3000:]
    assert result.ranked[0]["status"] == "finished"
    best = load_yaml(result.best_yaml)
    assert best.augment.area_min == pytest.approx(result.ranked[0]["augment.area_min"])
    assert best.augment.aspect_min == pytest.approx(1 / best.augment.aspect_max)
    assert best.optim.lr == result.ranked[0]["optim.lr"]  # the best trial's point of the grid
    assert best.augment.photometric == 0.1  # fixed with --set, not swept
    assert all("augment.photometric" not in r for r in result.ranked)
    assert best.data.path == tiny_data
    # Printed: the trials it plans, the ranked table (best first), where best.yaml is.
    assert "sweep tiny: 2 trials over " in out and "optim.lr=grid:0.01,0.02" in out
    lines = out.splitlines()
    head = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "trial", "status"]
    )
    assert "augment.area_min" in lines[head] and "optim.lr" in lines[head]
    for rank, row in enumerate(result.ranked, 1):
        assert lines[head + rank].split()[:3] == [str(rank), row["trial"], row["status"]]
    assert f"best job: {result.best_yaml}  (train it:" in out

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
        assert float(params["augment.area_min"]) == pytest.approx(row["augment.area_min"])
        assert float(params["optim.lr"]) == row["optim.lr"]
        metrics = {m["key"] for m in child["data"]["metrics"]}
        # Grouped in the UI by prefix; val/top1_error is the served (Polyak) weights' error.
        assert {"val/polyak_top1_error", "val/raw_top1_error", "val/top1_error"} <= metrics
        if child["info"]["status"] == "FINISHED":  # a stopped trial may predate its first loss
            assert {"train/loss", "val/final_polyak_top1_error", "val/final_top1_error"} <= metrics
            history = _rest(
                mlflow_server,
                "metrics/get-history?run_id={}&metric_key=train%2Floss".format(
                    child["info"]["run_id"]
                ),
            )
            assert len(history["metrics"]) >= 1
    # A grid runs each of its values once: the children's learning rates are the grid.
    lrs = [
        float(p["value"]) for c in children for p in c["data"]["params"] if p["key"] == "optim.lr"
    ]
    assert sorted(lrs) == GRID, lrs
    finished = [c for c in children if c["info"]["status"] == "FINISHED"]
    assert finished, "the best trial ran to its budget"
    assert Path(result.out_dir, "ranked.json").is_file()


def test_the_mlflow_ui_compares_the_trials_and_shows_the_best(swept, mlflow_server, tmp_path):
    """As a user compares a sweep: open the experiment in the MLflow UI, expand the sweep's
    parent run, select its trials, open the compare view, and read the augment and the error."""
    _, result = swept
    trials = {r["run_id"]: r for r in result.ranked}
    parent = _rest(mlflow_server, f"runs/get?run_id={result.parent_run_id}")["run"]["info"]
    header = Path(result.best_yaml).read_text().splitlines()[0]  # "# best of sweep P: trial T, ..."
    best_trial = header.split(": trial ")[1].split(",")[0]
    best_run = next(r["run_id"] for r in result.ranked if r["trial"] == best_trial)
    shots = tmp_path / "screenshots"

    with chromium(shots) as browser:
        browser.get(mlflow_server + "/")
        click(browser, "//*[normalize-space()='Model training']")
        click(browser, "//a[normalize-space()='sweep-test']")
        row = "//div[@role='row'][.//a[contains(@href, '/runs/{}')]]"
        parent_row = wait_for(browser, row.format(parent["run_id"]))
        assert parent["run_name"] in parent_row.text
        click(
            browser,
            row.format(parent["run_id"]) + "//button[contains(@data-component-id, "
            "'runnamecellrenderer')]",
        )
        for run_id in trials:  # the trials appear under their parent once it is expanded
            click(browser, row.format(run_id) + "//div[contains(@class, 'ag-checkbox-input')]")
        browser.save_screenshot(str(shots / "runs.png"))
        click(browser, "//button[normalize-space()='Compare']")
        run_ids = table_row(browser, "Run ID:")
        names = table_row(browser, "Run Name:")
        areas = table_row(browser, "augment.area_min")
        metrics = compared_metrics(browser)
        browser.save_screenshot(str(shots / "compare.png"))

    assert sorted(run_ids) == sorted(trials), run_ids
    # Each trial's sampled crop area, as it ran.
    for run_id, area in zip(run_ids, areas, strict=True):
        assert float(area) == pytest.approx(trials[run_id]["augment.area_min"], rel=1e-6)
    # Every trial's validation error is charted under val/, beside train/, ps/ and faults/.
    assert sorted(metrics["val/top1_error"]) == list(range(len(run_ids))), metrics
    assert all(0.0 <= float(v) <= 1.0 for v in metrics["val/top1_error"].values())
    assert {"train/loss", "ps/updates_per_s", "faults/replica_failures"} <= set(metrics)
    # The best trial in the compare view (lowest final error of the weights served) is the one
    # best.yaml names (a trial ASHA stopped has no final error).
    final = {run_ids[col]: float(v) for col, v in metrics["val/final_top1_error"].items()}
    lowest = min(final.values())
    assert best_run in final and final[best_run] == pytest.approx(lowest, abs=1e-9), final
    assert lowest == pytest.approx(trials[best_run]["polyak_top1_error"], abs=5e-4)
    # Each trial's run is named after its trial, as best.yaml names the best one.
    assert names[run_ids.index(best_run)] == f"tiny-trial-{best_trial}", names
    assert (shots / "compare.png").stat().st_size > 10_000
