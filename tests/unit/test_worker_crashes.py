"""A worker process that dies mid-test ends the run with that test failed, the rest run once,
and what the machine looked like printed; xdist's own `loadfile` hangs instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

_FILES = {
    "conftest.py": (
        "from worker_crashes import (  # noqa: F401\n"
        "    pytest_sessionstart, pytest_testnodedown, pytest_xdist_make_scheduler,\n"
        ")\n"
    ),
    "test_a.py": "def test_a1():\n    pass\n\n\ndef test_a2():\n    pass\n",
    # The worker is killed as the kernel kills for memory: no handler runs, nothing is printed.
    "test_b.py": (
        "import os, signal, time\n\n\n"
        "def test_b1():\n    time.sleep(2)\n    os.kill(os.getpid(), signal.SIGKILL)\n\n\n"
        "def test_b2():\n    pass\n"
    ),
    "test_c.py": (
        "import time\n\n\ndef test_c1():\n    time.sleep(1)\n\n\ndef test_c2():\n    pass\n"
    ),
    **{
        f"test_{x}.py": f"def test_{x}1():\n    pass\n\n\ndef test_{x}2():\n    pass\n"
        for x in "degh"
    },
    "test_one.py": "def test_alone():\n    pass\n",  # a file of one test after the crash
}


def test_a_killed_worker_fails_its_test_and_the_run_still_ends(tmp_path):
    for name, text in _FILES.items():
        (tmp_path / name).write_text(text)
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"),
            *("--dist", "loadfile", "-q", "-rf", "-o", "addopts=", "--rootdir", str(tmp_path)),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # the hang this guards against would last until this
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "1 failed, 14 passed" in out, out[-3000:]  # test_b2 ran
    assert "crashed while running 'test_b.py::test_b1'" in out, out[-3000:]
    assert out.count("node down: ") == 1, out[-3000:]  # test_b1 was not given to a new worker
    assert "processes killed for memory since the start: " in out, out[-3000:]
    assert "memory available: " in out and "largest processes:" in out, out[-3000:]
