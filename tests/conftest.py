"""Shared fixtures: a real local Ray (2 CPUs, 127.0.0.1, always shut down), a tiny generated
Parquet data set, and a throwaway sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from quadrants import write_quadrant_set

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


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return "sqlite:///" + str(tmp_path / "mlruns" / "mlflow.db")
