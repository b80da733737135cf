"""Small real data sets on disk, shared by the data tests."""

from __future__ import annotations

import pytest

from distinception.data.generated import generate_dataset


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 classes x (8 train + 4 val) images of 32 px, in shards of 10 rows (several files)."""
    out = str(tmp_path_factory.mktemp("tiny") / "set")
    generate_dataset(out, classes=3, per_class=8, val_per_class=4, size=32, seed=7, shard_rows=10)
    return out
