"""The real-data check, as a user runs it: import the UCI digits with the shipped script, train
them with `distinception train --recipe digits` (real Ray actors, real Parquet, a real MLflow
store), and land in an accuracy band measured for the default async update."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from as_typed import distinception
from mlflow.tracking import MlflowClient
from ray_heads import ROOT

from distinception.evaluation import evaluate_target

pytestmark = pytest.mark.integration


#: Measured (`distinception bench updates --recipe digits`, BENCHMARKS.md "Async parity"), 2
#: replicas, lr 0.05, momentum 0.9, 10 epochs, seeds 0-2 on this 2-core machine: the default
#: update ends at Polyak top-1 error 1.1-1.7% (raw 1.4-1.7%), level with a plain loop; the
#: previous update (full momentum, one step of lag) at 4.5-10.6% (raw 8.4-11.1%); weights scored
#: with BatchNorm statistics recomputed on the first, class-sorted training rows (the bug this
#: also guards) at about 29%. The bounds sit above the default's worst seed and below the
#: previous update's best.
POLYAK_BOUND = 0.04
RAW_BOUND = 0.06


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("digits") / "digits"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import_digits.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "files read: 1797" in proc.stdout
    assert "train: 1438 images written" in proc.stdout
    assert "val: 359 images written" in proc.stdout
    assert "skipped: 0" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == [str(d) for d in range(10)]
    return str(out)


def test_import_script_rejects_a_bad_size(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "import_digits.py"),
            "--out",
            str(tmp_path),
            "--size",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--size=4: expected an integer >= 8" in proc.stderr
    assert not (tmp_path / "manifest.json").exists()


def _train_digits(digits: str, mlflow_uri: str, cwd, *sets: str):
    """`distinception train --recipe digits --set ...` on the imported digits; (output, run)."""
    proc = distinception(
        *("train", "--recipe", "digits", "--set", f"data.path={digits}"),
        *("--set", f"tracking.tracking_uri={mlflow_uri}", "--set", "run.progress=false"),
        *(arg for item in sets for arg in ("--set", item)),
        cwd=cwd,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )
    run_id = proc.stdout.split("MLflow run ")[1].split()[0]
    return proc, MlflowClient(mlflow_uri).get_run(run_id)


def test_default_async_update_trains_the_digits_like_a_plain_loop(digits, mlflow_uri, tmp_path):
    proc, run = _train_digits(digits, mlflow_uri, tmp_path, "tracking.log_model=false")
    metrics = run.data.metrics
    assert run.data.params["ps.momentum_correction"] == "full"
    assert metrics["val/polyak_top1_error"] <= POLYAK_BOUND, proc.stdout
    assert metrics["val/raw_top1_error"] <= RAW_BOUND, proc.stdout
    # Two replicas, one step of lag: the shards measured staleness and lowered their momentum.
    assert 0.0 < metrics["train/momentum"] < 0.9


def test_a_torchvision_resnet_trains_the_digits_as_typed(digits, mlflow_uri, tmp_path):
    """The README's command for another arch, on the same shards, replicas and averager, with
    its Polyak model logged to MLflow and loadable."""
    proc, run = _train_digits(
        digits,
        mlflow_uri,
        tmp_path,
        "model.arch=torchvision:resnet18",
        "model.width=1",
        "run.epochs=5",
    )
    run_id = run.info.run_id
    assert run.info.run_name == "digits-resnet18-32px"
    assert run.data.params["model.arch"] == "torchvision:resnet18"
    # 10 classes, chance 0.9. At lr 0.05, as for GoogLeNet, ResNet-18's first epochs swing: after
    # 2 epochs one run ended at 7.2% raw error, another (the machine busier) at 47.9%. After 5,
    # four runs, two at a time, ended at 2.2-4.2% Polyak and 2.8-5.6% raw (2026-12-03), and
    # 2.5-5.6% on 2026-12-05, where under the demo's half correction the same four seeds ended
    # at 9.5-41% (two above this bound). A quarter of the images wrong fails.
    assert run.data.metrics["val/final_polyak_top1_error"] <= 0.25, proc.stdout
    assert run.data.metrics["val/final_raw_top1_error"] <= 0.25, proc.stdout
    # The logged Polyak model, scored on 1 and 10 crops as `distinception evaluate` does.
    report = evaluate_target(
        f"runs:/{run_id}/model", ["center", "ten"], uri=mlflow_uri, limit=100, log=False
    )
    assert [r["crops"] for r in report["rows"]] == [1, 10] and report["images"] == 100
    assert all(r["top1_error"] <= 0.25 for r in report["rows"]), report["rows"]
