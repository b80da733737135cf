"""Shared fixtures: a real local Ray (2 CPUs, 127.0.0.1, always shut down), a tiny generated
Parquet data set, and a throwaway sqlite MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """4 classes x (64 train + 16 val) images of 32 px, written once per session."""
    from distinception.data.generated import generate_dataset

    out = tmp_path_factory.mktemp("data") / "tiny"
    generate_dataset(str(out), classes=4, per_class=64, val_per_class=16, size=32, seed=0)
    return str(out)


def write_quadrant_set(out: str, *, per_class: int, val_per_class: int, size: int = 32) -> str:
    """A quickly learnable set through the real writer: the class is the quadrant holding a
    bright textured square, on noise. Tests of the parameter server use it to see learning
    within a few thousand examples; the built-in set is deliberately much harder."""
    import numpy as np
    import torch
    from torchvision.io import encode_jpeg

    from distinception.data.shards import DatasetWriter

    rng = np.random.default_rng(0)
    half = size // 2
    with DatasetWriter(out, ["top-left", "top-right", "bottom-left", "bottom-right"]) as writer:
        for split, n in (("train", per_class), ("val", val_per_class)):
            for i in range(4 * n):
                label = i % 4
                img = rng.integers(0, 90, (3, size, size)).astype(np.uint8)
                r, c = divmod(label, 2)
                side = int(rng.integers(half // 2, half))
                top = r * half + int(rng.integers(0, half - side + 1))
                left = c * half + int(rng.integers(0, half - side + 1))
                img[:, top : top + side, left : left + side] = rng.integers(150, 256, (3, 1, 1))
                jpeg = encode_jpeg(torch.from_numpy(img), quality=90).numpy().tobytes()
                writer.write(split, jpeg, label, f"{split}/{i}")
    return out


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
