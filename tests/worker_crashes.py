"""What the suite does when one of its worker processes dies mid-test.

A test worker is a Ray driver, an MLflow client and a torch process at once; when one dies
(killed for memory, or exited by a native library) the run must still end, name the test it
died in, and say what the machine looked like, so that CI shows a failure with a cause rather
than a timeout with none.

Three things here, all hooks that `conftest.py` takes in:

- `LoadFileAfterCrash`, the `--dist loadfile` scheduler with the crash path mended. pytest-xdist
  3.8's version puts every file the dead worker was ever given back in the queue, finished ones
  included; a finished file goes out as an empty batch that never completes, and once the
  queue's tail is all such batches every worker waits for work that never comes (the run hangs
  until CI kills it). It also hands the test that killed the worker to the replacement to kill
  again, and can leave a replacement holding a single test it will not start until it is sent
  another. Here only unfinished files go back, without the test that crashed (already reported
  failed), and a worker is always left with two tests or told to stop.
- `pytest_testnodedown`: when a worker dies, the controller says how it ended (the signal
  that killed it, or its exit status), the Python stacks it dumped if it crashed in native code
  (each worker's faulthandler writes to a file of its own, which the controller reads), the
  kernel's count of processes killed for memory (against the count at the start), the memory
  left, the largest processes, and the error lines of the Ray driver log of any driver that died
  with it. The same account goes into the crashed test's failure report
  (`pytest_handlecrashitem`), so that it stands beside the failure in CI's summary rather than
  somewhere above it.
- In each worker, faulthandler writes to that file, and is put back before each test phase
  when something (Ray's shutdown) has left SIGSEGV without a handler.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

#: Where Ray keeps the sessions that a job (or a test) starts without a temp dir of its own.
_RAY_TMP = Path("/tmp/ray")
_OOM_AT_START: list[int] = []
#: Each worker's account of its death, by gateway id, for its crashed test's report.
_DEATHS: dict[str, list[str]] = {}
#: A worker's faulthandler file, held open for the life of the worker.
_FAULT_FILE: list[Any] = []


class LoadFileAfterCrash(LoadFileScheduling):
    """xdist's `loadfile`, except after a worker dies (see the module's docstring)."""

    def remove_node(self, node: Any) -> str | None:
        workload = self.assigned_work.pop(node)
        unfinished = {scope: unit for scope, unit in workload.items() if not all(unit.values())}
        if not unfinished:
            return None  # a normal shutdown: all it was given is done
        self.registered_collections.pop(node, None)  # its replacement registers afresh
        # A worker runs its files in the order given and their tests in order: the first test
        # not done is the one it died in.
        unit, crashed = next(
            (unit, nodeid)
            for unit in unfinished.values()
            for nodeid, done in unit.items()
            if not done
        )
        unit[crashed] = True  # reported failed by the controller; not run again
        self.workqueue.update({s: u for s, u in unfinished.items() if not all(u.values())})
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed

    def _reschedule(self, node: Any) -> None:
        if node not in self.registered_collections:
            return  # a replacement still collecting: scheduled once its collection is in
        super()._reschedule(node)
        # A worker holds back its last test until it is sent another or told to stop (it
        # needs the next test to tear down the right fixtures): never leave it one.
        while not node.shutting_down and self._pending_of(self.assigned_work[node]) < 2:
            if not self.workqueue:
                node.shutdown()
                break
            self._assign_work_unit(node)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadFileAfterCrash | None:
    if config.getvalue("dist") != "loadfile":
        return None
    return LoadFileAfterCrash(config, log)


def _proc_number(path: str, key: str, base: int = 10) -> int:
    """The number after `key` in a /proc table such as /proc/vmstat, /proc/meminfo or
    /proc/self/status (signal masks there are hex: `base` 16); -1 if absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(path).read_text().splitlines():
            if line.split(maxsplit=1)[:1] == [key]:
                return int(line.split()[1], base)
    return -1


def _oom_kills() -> int:
    return _proc_number("/proc/vmstat", "oom_kill")


def _largest_processes(count: int = 6) -> list[str]:
    rows = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            rss_kib = next(
                int(line.split()[1])
                for line in (entry / "status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, StopIteration):
            continue
        cmd = " ".join(cmd.split())  # `python -c` code spans lines
        rows.append((rss_kib, f"{rss_kib // 1024:>6} MiB  pid {entry.name:>7}  {cmd[:110]}"))
    return [row for _, row in sorted(rows, reverse=True)[:count]]


def _dead_driver_logs(roots: list[Path], within_s: float = 120) -> list[Path]:
    """Ray driver logs (`python-core-driver-<job>_<pid>.log`) written in the last `within_s`
    seconds by a process that is gone."""
    found = []
    now = time.time()
    for root in roots:
        for log in root.glob("**/logs/python-core-driver-*.log"):
            pid = log.stem.rsplit("_", 1)[-1]
            with contextlib.suppress(OSError, ValueError):
                mtime = log.stat().st_mtime
                if now - mtime < within_s and not Path(f"/proc/{int(pid)}").exists():
                    found.append((mtime, log))
    return [log for _, log in sorted(found)[-2:]]


def _driver_log_account(log: Path) -> list[str]:
    """What a dead driver's Ray log says: its error and fatal lines, and whether its Ray was
    started from a thread other than the process's main one (a Ray that dies with that thread:
    see stray_ray.py)."""
    # Ray's log lines read `[date time LEVEL pid tid] file:line: message`.
    heads = [
        (line.split("] ", 1)[0].lstrip("[").split(" "), line)
        for line in log.read_text(errors="replace").splitlines()
        if line.startswith("[")
    ]
    lines = []
    for head, line in heads:
        if "Constructing CoreWorkerProcess" in line and len(head) == 5 and head[3] != head[4]:
            lines.append(
                f"  its Ray was started from thread {head[4]}, not from the main thread of "
                f"process {head[3]}: Ray's GCS dies with the thread that started it"
            )
            break
    errors = [line for head, line in heads if head[2:3] in (["E"], ["F"], ["C"])]
    if errors:
        lines.append(f"  errors in the Ray driver log {log} (last 12):")
        lines.extend("    " + line for line in errors[-12:])
    return lines


def _fault_log(controller_pid: int, worker_id: str) -> Path:
    """Where worker `worker_id` of the controller `controller_pid` dumps its stacks on a crash."""
    return Path(tempfile.gettempdir()) / f"pytest-faults-{controller_pid}-{worker_id}.log"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without workers)
        _OOM_AT_START[:] = [_oom_kills()]


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """In a worker, send faulthandler's dumps (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL) to a file
    the controller reads when the worker dies: on stderr they land among the other workers'
    output, far from the failure they explain. After pytest's own faulthandler set-up, which
    this replaces."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        return
    path = _fault_log(os.getppid(), workerinput["workerid"])
    _FAULT_FILE[:] = [path.open("w")]
    faulthandler.enable(file=_FAULT_FILE[0], all_threads=True)


def _rearm_faulthandler() -> None:
    """Put faulthandler's handlers back if something took them away. `ray.shutdown()` does:
    after a `ray.init()` and shutdown in a process with faulthandler enabled, SIGSEGV, SIGABRT,
    SIGFPE and SIGILL are left at their defaults (measured with Ray 2.60), so a worker that had
    run a module on an in-process Ray would crash without a word. Left alone while anything
    (Ray's own handler, which prints the native stack and then calls the one it found) catches
    SIGSEGV."""
    caught = _proc_number("/proc/self/status", "SigCgt:", base=16)  # signals with a handler
    if _FAULT_FILE and not caught & (1 << (signal.SIGSEGV - 1)):
        faulthandler.disable()  # it still counts itself enabled, and `enable` would do nothing
        faulthandler.enable(file=_FAULT_FILE[0], all_threads=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _rearm_faulthandler()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _rearm_faulthandler()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    _rearm_faulthandler()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _FAULT_FILE:  # a worker that ends normally leaves no file behind
        faulthandler.enable(file=sys.__stderr__, all_threads=True)  # off the file it closes
        _FAULT_FILE.pop().close()
        _fault_log(os.getppid(), config.workerinput["workerid"]).unlink(missing_ok=True)


def _how_it_ended(node: Any) -> str:
    """The dead worker's exit, as its parent (this controller) reaped it."""
    popen = getattr(getattr(node.gateway, "_io", None), "popen", None)
    if popen is None:
        return "exit status unknown"
    try:
        code = popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return "still running 10 s after its connection closed"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with status {code}"


def _fault_dump(node: Any) -> list[str]:
    path = _fault_log(os.getpid(), node.gateway.id)
    with contextlib.suppress(OSError):
        dump = path.read_text(errors="replace").splitlines()
        path.unlink()
        if dump:
            return ["  its faulthandler dump (first 50 lines):", *("    " + x for x in dump[:50])]
    return []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    if error is None:
        return  # finished normally
    before = _OOM_AT_START[0] if _OOM_AT_START else -1
    lines = [
        f"worker {node.gateway.id} died ({error}; {_how_it_ended(node)}): processes killed for "
        f"memory since the start: {_oom_kills() - before if before >= 0 else 'unknown'}; memory "
        f"available: {_proc_number('/proc/meminfo', 'MemAvailable:') // 1024} MiB",
        *_fault_dump(node),
        "  largest processes:",
        *(f"    {row}" for row in _largest_processes()),
    ]
    roots = [_RAY_TMP]
    factory = getattr(node.config, "_tmp_path_factory", None)  # where xdist puts workers' temps
    if factory is not None:
        roots.append(factory.getbasetemp())
    for log in _dead_driver_logs(roots):
        lines.extend(_driver_log_account(log))
    _DEATHS[node.gateway.id] = lines
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in lines:
            reporter.write_line(line)


@pytest.hookimpl(optionalhook=True)
def pytest_handlecrashitem(crashitem: str, report: pytest.TestReport, sched: Any) -> None:
    """The crashed test's failure carries the worker's account of its death."""
    lines = _DEATHS.pop(report.node.gateway.id, None)  # xdist sets `node` on the report
    if lines and isinstance(report.longrepr, str):
        report.longrepr = "\n".join([report.longrepr, *lines])
