"""The direction of imports is part of the design: model/ and data/ never see ray or mlflow."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Contracts: 8 kept, 0 broken" in proc.stdout


def _loaded_after(imports: str, unwanted: str) -> None:
    """In a fresh interpreter, `import IMPORTS` leaves no module for which `UNWANTED` (an
    expression of `m`, a module name) holds."""
    code = f"import sys, {imports}; bad = [m for m in sys.modules if {unwanted}]; "
    code += "assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_model_and_data_import_without_ray_or_mlflow():
    _loaded_after(
        "distinception.model.googlenet, distinception.data.loader", "m in ('ray', 'mlflow')"
    )


def test_plain_ps_layers_import_without_ray():
    """The transport's plain parts and the cores below the actor shell run without Ray (their
    unit tests drive them with an in-memory channel)."""
    _loaded_after(
        "distinception.ps, distinception.ps.replica_loop, distinception.ps.shard_server, "
        "distinception.ps.averager, distinception.ps.transport.shm, "
        "distinception.ps.transport.wire",
        "m == 'ray'",
    )
