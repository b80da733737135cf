"""The reliability suite's measured figures: printed, and appended as JSON lines to
$DISTINCEPTION_FAULT_REPORT when set (RELIABILITY.md quotes them)."""

from __future__ import annotations

import json
import os

import pytest

SEED = int(os.environ.get("DISTINCEPTION_FAULT_SEED", "20261122"))


@pytest.fixture
def report():
    def write(name: str, figures: dict) -> None:
        print(f"{name}: {json.dumps(figures, sort_keys=True)}")
        path = os.environ.get("DISTINCEPTION_FAULT_REPORT", "")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": name, "seed": SEED} | figures) + "\n")

    return write


@pytest.fixture
def fault_seed() -> int:
    """Every random fault point derives from this; rerun a failure with the seed it printed."""
    return SEED
