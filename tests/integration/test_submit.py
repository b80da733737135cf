"""`distinception submit` against a real local head with the Jobs API and token auth on."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import pytest
from as_typed import EXE, distinception
from mlflow.tracking import MlflowClient
from ray_heads import ROOT, submit_followed

pytestmark = pytest.mark.integration

SPECS = sorted(p.name for p in (ROOT / "jobs").glob("*.yaml"))
#: The test file that submits each shipped spec to a real head, at a tiny budget and with its
#: own assertions. A spec missing here fails `test_every_shipped_spec_is_submitted_by_a_test`.
SUBMITTED_BY = {
    "train.yaml": "test_submit.py",
    "train-paper-gpu.yaml": "test_submit.py",
    "ensemble.yaml": "test_ensemble.py",
    "sweep.yaml": "test_sweep.py",
    "import.yaml": "test_object_storage.py",
}
#: A CPU head has no GPU and no bucket: the GPU spec's GPU ask, 224-px faithful model and bucket
#: are replaced; its elastic pool, custom resources and `--address auto` stay.
PAPER_GPU_ON_CPU = shlex.split(
    "--recipe tiny --config {tiny_config} "
    "--set placement.replica_gpus=0 --set placement.replica_cpus=0.5 --set ps.num_replicas=2 "
    "--set transport.compute_dtype=float32 "
    "--set run.checkpoint_dir={checkpoints} --set run.max_examples=1500 "
    "--set tracking.log_model=false"
)


def cli(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return distinception(*args, code=None, cwd=ROOT, env=env, timeout=timeout)


def test_submit_follows_the_train_job_to_success_and_its_run_is_in_mlflow(
    jobs_head, tiny_data, mlflow_uri
):
    env = dict(jobs_head.env, MLFLOW_TRACKING_URI=mlflow_uri)
    # The shipped spec with a tiny budget appended to its command; one shard and one replica,
    # as the job's layout is not what is tested here (every actor process costs seconds).
    small = ("--set", "ps.num_shards=1", "--set", "ps.num_replicas=1")
    proc = submit_followed(
        jobs_head,
        "train.yaml",
        *("--recipe", "tiny", "--set", f"data.path={tiny_data}", *small),
        *("--set", "run.max_examples=1500", "--set", "tracking.log_model=false"),
        mlflow_uri=mlflow_uri,
    )
    out = proc.stdout
    job_id = out.split("submitted ")[1].split()[0]
    assert job_id.startswith("train-demo-")
    assert f"job {job_id}: SUCCEEDED" in out
    assert "distinception train: tiny" in out  # the job's own report, streamed back
    run_id = out.split("MLflow run ")[1].split()[0]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["run.max_examples"] == "1500"

    listed = cli("jobs", "list", "--address", jobs_head.dashboard_url, env=env)
    assert listed.returncode == 0 and job_id in listed.stdout and "SUCCEEDED" in listed.stdout
    status = cli("jobs", "status", job_id, "--address", jobs_head.dashboard_url, env=env)
    assert status.stdout.startswith(f"{job_id}: SUCCEEDED")
    logs = cli("jobs", "logs", job_id, "--address", jobs_head.dashboard_url, env=env)
    assert f"MLflow run {run_id}" in logs.stdout
    stop = cli("jobs", "stop", job_id, "--address", jobs_head.dashboard_url, env=env)
    assert stop.returncode == 0 and "already finished" in stop.stdout

    # A job at a budget it would take hours to reach, submitted without --follow: stopped while
    # it runs, and a `jobs logs --follow` started on it returns once it has ended.
    address = ("--address", jobs_head.dashboard_url)
    proc = cli(
        *("submit", "jobs/train.yaml", *address, "--no-requirements", "--"),
        *("--recipe", "tiny", "--set", f"data.path={tiny_data}", *small),
        *("--set", "run.max_examples=100000000", "--set", "tracking.log_model=false"),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    long_id = proc.stdout.split("submitted ")[1].split()[0]
    assert f"distinception jobs logs {long_id} --follow" in proc.stdout
    _wait_for_status(long_id, "RUNNING", address, env)
    follow = subprocess.Popen(
        [EXE, "jobs", "logs", long_id, "--follow", *address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        stop = cli("jobs", "stop", long_id, *address, env=env)
        assert stop.returncode == 0 and stop.stdout.strip() == f"{long_id}: stop requested"
        _wait_for_status(long_id, "STOPPED", address, env)
        out, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 1, err[-3000:]  # not SUCCEEDED
    assert out.rstrip().endswith(f"job {long_id}: STOPPED"), out[-3000:]


def _wait_for_status(job_id: str, wanted: str, address: tuple, env: dict, timeout=90) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = cli("jobs", "status", job_id, *address, env=env).stdout
        if status.startswith(f"{job_id}: {wanted}"):
            return
        time.sleep(1.0)
    raise AssertionError(f"{job_id} not {wanted} within {timeout} s: {status}")


def test_a_job_too_big_for_a_cluster_without_an_autoscaler_fails_at_once_in_one_line(
    jobs_head, tiny_data, tmp_path
):
    """This head was started without `--autoscaling-config`: its 4 CPUs are all it will have."""
    proc = distinception(
        *("train", "--address", jobs_head.gcs_address, "--recipe", "tiny"),
        *("--set", f"data.path={tiny_data}", "--set", "ps.num_replicas=8"),
        *("--set", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"),
        code=2,
        env=jobs_head.env,
        cwd=tmp_path,
        timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert not any("waiting for the autoscaler" in line for line in lines), proc.stderr
    last = lines[-1]
    assert last.startswith("distinception: error: the job's actors ask for "), proc.stderr
    assert "CPU" in last and "ps.num_replicas=8" in last and "the cluster has 4" in last
    assert "no autoscaler to add nodes; lower ps.num_replicas" in last
    assert "Traceback" not in proc.stderr and " INFO " not in proc.stderr  # no Ray notices


def test_missing_or_wrong_token_is_one_clear_line(jobs_head, tmp_path):
    no_token = {k: v for k, v in jobs_head.env.items() if not k.startswith("RAY_AUTH_TOKEN")}
    no_token["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    proc = cli("jobs", "list", "--address", jobs_head.dashboard_url, env=no_token)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no Ray auth token found" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "~/.ray/auth_token" in proc.stderr

    wrong = dict(no_token, RAY_AUTH_TOKEN="0" * 64)
    proc = cli("jobs", "list", "--address", jobs_head.dashboard_url, env=wrong)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused the token" in proc.stderr, proc.stderr


def test_every_shipped_spec_is_submitted_by_a_test():
    assert sorted(SUBMITTED_BY) == SPECS
    for spec, test_file in SUBMITTED_BY.items():
        text = Path(__file__).with_name(test_file).read_text()
        assert "submit_followed(" in text and f'"{spec}"' in text, (spec, test_file)


def test_the_paper_gpu_spec_runs_to_success_on_a_cpu_head(
    jobs_head, tiny_data, mlflow_uri, tmp_path
):
    """Inside a job RAY_ADDRESS names the cluster: a spec whose command starts its own Ray, or
    asks for what the cluster lacks, fails or hangs here."""
    from distinception.recipes import get_recipe

    tiny_config = tmp_path / "tiny.yaml"
    tiny_config.write_text(get_recipe("tiny").to_yaml())
    extra = [
        a.format(tiny_config=tiny_config, checkpoints=tmp_path / "ckpt") for a in PAPER_GPU_ON_CPU
    ]
    submit_followed(
        jobs_head,
        "train-paper-gpu.yaml",
        *extra,
        *("--set", f"data.path={tiny_data}"),
        mlflow_uri=mlflow_uri,
    )
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
