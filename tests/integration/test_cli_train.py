"""`distinception train` and `evaluate` as a user runs them: subprocesses of the installed entry
point, their progress, report, MLflow run, registered model and scores."""

from __future__ import annotations

import json
import os

import pytest
from as_typed import distinception
from mlflow.tracking import MlflowClient

from distinception.evaluation import evaluate_target

pytestmark = pytest.mark.integration


def test_train_command_reports_and_records_a_run(tiny_data, mlflow_uri, tmp_path):
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = distinception(
        *("train", "--recipe", "tiny", "--register-as", "tiny-model"),
        *("--set", f"data.path={tiny_data}", "--set", f"tracking.tracking_uri={mlflow_uri}"),
        *("--set", "run.max_examples=1500", "--checkpoint-dir", str(tmp_path / "ckpt")),
        cwd=tmp_path,
        env=env,
    )
    # The terminal shows what concerns the user: the progress bar and the report. Ray's warnings
    # (large actor constructor arguments among them) and matplotlib's legend warning stay in
    # the logs.
    noise = [
        line
        for line in proc.stderr.splitlines()
        if "WARNING" in line or "constructor" in line or "No artists with labels" in line
    ]
    assert not noise, proc.stderr[-3000:]
    out = proc.stdout
    assert "distinception train: tiny" in out
    assert "Polyak-averaged weights" in out and "raw weights" in out
    assert "mlflow ui --backend-store-uri" in out
    run_id = out.split("MLflow run ")[1].split()[0]
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.name"] == "distinception train"
    # Registered as version 1, tagged with its recipe and its augment.
    (version,) = client.search_model_versions("name = 'tiny-model'")
    assert version.run_id == run_id and str(version.version) == "1"
    assert version.tags["recipe"] == "tiny" and version.tags["augment.flip"] == "True"
    assert (tmp_path / "ckpt" / "progress.json").is_file()
    assert (tmp_path / "ckpt" / "shard-0.pt").is_file()

    # Scored later by each name a user has for it: the run id (as typed), the run's model URI
    # and the registered version (through the same function the command calls). All three are
    # the same model, so they score the same.
    ev = distinception(
        *("evaluate", run_id, "--crops", "center,ten", "--limit", "16", "--json"),
        *("--tracking-uri", mlflow_uri),
        env=env,
    )
    reports = [json.loads(ev.stdout)]
    for target in (f"runs:/{run_id}/model", "models:/tiny-model/1"):
        reports.append(
            evaluate_target(target, ["center", "ten"], uri=mlflow_uri, limit=16, log=False)
        )
    for report in reports:
        assert report["kind"] == "model" and report["images"] == 16, report
        assert [r["crops"] for r in report["rows"]] == [1, 10]
    errors = [[r["top1_error"] for r in report["rows"]] for report in reports]
    assert errors[0] == errors[1] == errors[2], errors


def test_resume_of_a_missing_checkpoint_is_one_line(tmp_path):
    proc = distinception("train", "--resume", str(tmp_path / "no"), code=2, timeout=120)
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "distinception: error:" in proc.stderr
