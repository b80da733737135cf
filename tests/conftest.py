"""Shared fixtures: a real local Ray (2 CPUs, 127.0.0.1, always shut down), a tiny generated
Parquet data set, and a throwaway sqlite MLflow store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from quadrants import write_quadrant_set
from worker_crashes import (  # noqa: F401  (hooks: pytest finds them by name)
    pytest_configure,
    pytest_handlecrashitem,
    pytest_runtest_call,
    pytest_runtest_setup,
    pytest_runtest_teardown,
    pytest_sessionstart,
    pytest_testnodedown,
    pytest_unconfigure,
    pytest_xdist_make_scheduler,
)

#: No worker starts a Ray that dies with a thread (see stray_ray.py).
pytest_plugins = ("stray_ray",)

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """4 classes x (64 train + 16 val) images of 32 px, written once per session."""
    from distinception.data.generated import generate_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_dataset(str(out), classes=4, per_class=64, val_per_class=16, size=32, seed=0)
    return str(out)


@pytest.fixture(scope="session")
def easy_data(tmp_path_factory) -> str:
    """4 quadrant classes x (96 train + 64 val) images of 32 px."""
    out = tmp_path_factory.mktemp("data") / "quadrants"
    return write_quadrant_set(str(out), per_class=96, val_per_class=64)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    tmp = tmp_path_factory.mktemp("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=str(tmp),
        object_store_memory=400 * 1024 * 1024,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def _mlflow_schema(tmp_path_factory) -> Path:
    """An empty MLflow store with its tables made, once per session: creating them (MLflow's
    migrations) costs seconds, and every test that records a run would pay it again."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-schema") / "mlflow.db"
    MlflowClient("sqlite:///" + str(db)).search_experiments()
    return db


@pytest.fixture
def mlflow_uri(tmp_path: Path, _mlflow_schema: Path) -> str:
    """A store of this test's own: a copy of the empty one, so nothing recorded is shared."""
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_mlflow_schema, db)
    return "sqlite:///" + str(db)
