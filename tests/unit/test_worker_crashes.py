"""A worker process that dies mid-test ends the run with that test failed, the rest run once,
and how it died and what the machine looked like printed; xdist's own `loadfile` hangs
instead."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

_FILES = {
    "conftest.py": (
        "from worker_crashes import (  # noqa: F401\n"
        "    pytest_configure, pytest_handlecrashitem, pytest_runtest_call,\n"
        "    pytest_runtest_setup, pytest_runtest_teardown, pytest_sessionstart,\n"
        "    pytest_testnodedown, pytest_unconfigure, pytest_xdist_make_scheduler,\n"
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
    # The worker crashes in native code: faulthandler dumps the stacks, then the signal kills
    # it. The test before takes faulthandler's handler away, as `ray.shutdown()` does.
    "test_d.py": (
        "import ctypes, faulthandler, signal, time\n\n\n"
        "def test_d1():\n    ctypes.CDLL(None).signal(signal.SIGSEGV, 0)\n\n\n"
        "def test_d2():\n    time.sleep(3)\n    faulthandler._sigsegv()\n"
    ),
    **{
        f"test_{x}.py": f"def test_{x}1():\n    pass\n\n\ndef test_{x}2():\n    pass\n"
        for x in "egh"
    },
    "test_one.py": "def test_alone():\n    pass\n",  # a file of one test after the crash
}


def test_a_killed_worker_fails_its_test_and_the_run_still_ends(tmp_path):
    for name, text in _FILES.items():
        (tmp_path / name).write_text(text)
    # CI=1: pytest prints each summary line whole, as it does on CI.
    env = dict(os.environ, PYTHONPATH=str(TESTS), CI="1")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "2"),
            *("--dist", "loadfile", "-q", "-rf", "-o", "addopts=", "--rootdir", str(tmp_path)),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=240)  # the hang this guards against lasts until this
    finally:
        proc.kill()
    assert proc.returncode == 1, out[-3000:]
    assert "2 failed, 13 passed" in out, out[-3000:]  # test_b2 ran
    assert out.count("node down: ") == 2, out[-3000:]  # no crashed test was given to a new worker
    # Each crashed test's own failure says how its worker died, in the summary line too.
    summary = out.split("short test summary info", 1)[1]
    assert "crashed while running 'test_b.py::test_b1'" in summary, out[-3000:]
    assert re.search(r"'test_b.py::test_b1'\n.*killed by SIGKILL", summary), out[-3000:]
    assert re.search(r"'test_d.py::test_d2'\n.*killed by SIGSEGV", summary), out[-3000:]
    # The native crash's Python stack, from the worker's faulthandler file, names the line.
    assert "Fatal Python error: Segmentation fault" in summary, out[-3000:]
    assert re.search(r'File ".*test_d.py", line 10 in test_d2', summary), out[-3000:]
    assert "processes killed for memory since the start: " in out, out[-3000:]
    assert "memory available: " in out and "largest processes:" in out, out[-3000:]
    # The dead workers' dump files were read and removed; the others removed their own.
    assert not list(Path(tempfile.gettempdir()).glob(f"pytest-faults-{proc.pid}-*"))


def test_a_dead_drivers_log_says_its_ray_was_started_off_the_main_thread(tmp_path):
    from worker_crashes import _driver_log_account

    def log(tid: int) -> Path:
        path = tmp_path / f"python-core-driver-01_{tid}.log"
        path.write_text(
            f"[2026-12-06 22:48:11,628 I 28229 {tid}] core_worker_process.cc:872: Constructing "
            "CoreWorkerProcess. pid: 28229\n"
            "Global stats: 63 total (1 active)\n"
            "[2026-12-06 22:49:13,361 W 28229 21686] retryable_grpc_client.cc:85: GCS has been "
            "unavailable for more than 60 seconds\n"
            "[2026-12-06 22:49:13,361 E 28229 21686] rpc_client.h:204: Failed to connect to GCS "
            "within 60 seconds. The program will terminate.\n"
        )
        return path

    off = _driver_log_account(log(21226))
    assert "started from thread 21226, not from the main thread of process 28229" in off[0]
    assert off[1].startswith("  errors in the Ray driver log") and len(off) == 3
    assert "Failed to connect to GCS" in off[2] and "GCS has been unavailable" not in off[2]
    on = _driver_log_account(log(28229))  # started from the main thread: errors only
    assert len(on) == 2 and on[0].startswith("  errors in") and on[1] == off[2]
