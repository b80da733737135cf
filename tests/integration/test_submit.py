"""`distinception submit` against a real local head with the Jobs API and token auth on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from ray_heads import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distinception.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def head(start_head):
    dashboard = free_port()
    head = start_head(
        [
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        port=free_port(),
        wait_port=dashboard,
    )
    head.dashboard_url = f"http://127.0.0.1:{dashboard}"
    return head


def test_submit_follows_the_train_job_to_success_and_its_run_is_in_mlflow(
    head, tiny_data, mlflow_uri
):
    env = dict(head.env, MLFLOW_TRACKING_URI=mlflow_uri)
    # The shipped spec, with the pinned requirements left out (this head runs in the project's
    # own virtualenv) and a tiny budget appended to its command.
    proc = cli(
        "submit",
        "jobs/train.yaml",
        "--address",
        head.dashboard_url,
        "--no-requirements",
        "--follow",
        "--",
        "--recipe",
        "tiny",
        "--set",
        f"data.path={tiny_data}",
        "--set",
        "run.max_examples=1500",
        "--set",
        "tracking.log_model=false",
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    job_id = out.split("submitted ")[1].split()[0]
    assert job_id.startswith("train-demo-")
    assert f"job {job_id}: SUCCEEDED" in out
    assert "distinception train: tiny" in out  # the job's own report, streamed back
    run_id = out.split("MLflow run ")[1].split()[0]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["run.max_examples"] == "1500"

    listed = cli("jobs", "list", "--address", head.dashboard_url, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = cli("jobs", "status", job_id, "--address", head.dashboard_url, env=env)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED")
    logs = cli("jobs", "logs", job_id, "--address", head.dashboard_url, env=env)
    assert f"MLflow run {run_id}" in logs.stdout
    stop = cli("jobs", "stop", job_id, "--address", head.dashboard_url, env=env)
    assert stop.returncode == 0 and "already finished" in stop.stdout


def test_missing_or_wrong_token_is_one_clear_line(head, tmp_path):
    no_token = {k: v for k, v in head.env.items() if not k.startswith("RAY_AUTH_TOKEN")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = cli("jobs", "list", "--address", head.dashboard_url, env=no_token)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no Ray auth token found" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "~/.ray/auth_token" in proc.stderr

    wrong = dict(no_token, RAY_AUTH_TOKEN="0" * 64)
    proc = cli("jobs", "list", "--address", head.dashboard_url, env=wrong)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused the token" in proc.stderr, proc.stderr
