"""The public API as the README shows it: the README's own example, run as a user runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    """The one Python block of the README's section on the Python API."""
    section = README.read_text().split("## Using it from Python", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return block


def test_the_readme_example_trains_and_reads_its_result(mlflow_uri, tmp_path):
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_uri, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id, examples, error = proc.stdout.splitlines()[-1].split()
    assert int(examples) >= 2000 and error.endswith("%")
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FINISHED"


def test_the_public_names_are_the_api_module_s():
    import importlib
    import pkgutil

    import distinception
    from distinception import api

    # No private module is named like an API function: importing it would set the module on
    # the package and hide the function. Import every module, then check the names.
    for info in pkgutil.walk_packages(distinception.__path__, "distinception."):
        importlib.import_module(info.name)
    for name in api.__all__:
        assert getattr(distinception, name) is getattr(api, name), name
