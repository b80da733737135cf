"""`distinception train` as a user runs it: a subprocess, its progress, its report, its run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration


def test_train_command_reports_and_records_a_run(tiny_data, mlflow_uri, tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [
            # The installed entry point, as a user types it.
            str(Path(sys.executable).with_name("distinception")),
            "train",
            "--recipe",
            "tiny",
            "--register-as",
            "tiny-model",
            "--set",
            f"data.path={tiny_data}",
            "--set",
            f"tracking.tracking_uri={mlflow_uri}",
            "--set",
            "run.max_examples=1500",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "distinception train: tiny" in out
    assert "Polyak-averaged weights" in out and "raw weights" in out
    assert "mlflow ui --backend-store-uri" in out
    run_id = out.split("MLflow run ")[1].split()[0]
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.name"] == "distinception train"
    # Registered as version 1, tagged with its recipe.
    (version,) = client.search_model_versions("name = 'tiny-model'")
    assert version.run_id == run_id and str(version.version) == "1"
    assert version.tags["recipe"] == "tiny" and version.tags["recipe.flip"] == "True"
    assert (tmp_path / "ckpt" / "progress.json").is_file()
    assert (tmp_path / "ckpt" / "shard-0.pt").is_file()


def test_resume_of_a_missing_checkpoint_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "distinception.cli", "train", "--resume", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "distinception: error:" in proc.stderr
