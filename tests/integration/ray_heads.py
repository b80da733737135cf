"""Real Ray heads started with `ray start --head ... --block` for the cluster-facing tests.

Each head has its own short temp dir (Unix socket paths are limited to ~107 bytes), its own
token (RAY_AUTH_TOKEN, so nothing under ~/.ray is read or written), and is stopped by SIGTERM to
its PID; anything still running from its temp dir afterwards (fake worker nodes the autoscaler
started) is killed by PID. Never `ray stop`: it is machine-wide.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from as_typed import distinception

RAY = str(Path(sys.executable).with_name("ray"))
ROOT = Path(__file__).resolve().parents[2]


# Ports handed out by `free_port`: below the kernel's ephemeral range (32768 and up), which it
# draws from for outgoing connections and for `bind(0)` (as Ray does for its own components),
# and above the ports Ray gives its workers (10002-19999).
_PORTS = range(20000, 32768)
_given: set[int] = set()


def free_port() -> int:
    """A port that nothing holds now and that no other process is likely to take before the
    server binds it: a port from `bind(0)` was once handed to another process's connection in
    the seconds before `ray start` bound it, and the head failed to start."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.choice(_PORTS)
        if port in _given:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1} after 200 tries")


def pids_using(path: str) -> list[int]:
    """PIDs of processes whose command line mentions `path` (our temp dir: ours only)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if path.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class Head:
    proc: subprocess.Popen
    temp_dir: str
    env: dict[str, str]
    gcs_address: str
    dashboard_url: str = ""

    @property
    def session_logs(self) -> Path:
        return Path(self.temp_dir) / "session_latest" / "logs"


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"port {port} not open after {timeout} s: {log.read_text()[-2000:]}")


class Heads:
    """Starts heads with `ray start --head ... --block` and stops every one it started."""

    def __init__(self) -> None:
        self.started: list[Head] = []

    def start(
        self, args: list[str], *, port: int, wait_port: int, extra_env: dict | None = None
    ) -> Head:
        temp_dir = tempfile.mkdtemp(prefix="dray-", dir="/tmp")
        env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            RAY_USAGE_STATS_ENABLED="0",
            # The project's virtualenv first on PATH, as for a user who activated it.
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            **(extra_env or {}),
        )
        env.pop("RAY_ADDRESS", None)
        log = Path(temp_dir) / "ray-start.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [
                    RAY,
                    "start",
                    "--head",
                    f"--port={port}",
                    f"--temp-dir={temp_dir}",
                    "--block",
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        head = Head(proc, temp_dir, env, f"127.0.0.1:{port}")
        self.started.append(head)
        _wait_for_port(wait_port, proc, log)
        return head

    def stop_all(self) -> None:
        """SIGTERM to every head and to everything it started (fake worker nodes included), all
        at once; SIGKILL to whatever is left after 10 s."""
        for head in self.started:
            head.proc.send_signal(signal.SIGTERM)
            kill_pids(pids_using(head.temp_dir), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            head.proc.poll() is None or pids_using(head.temp_dir) for head in self.started
        ):
            time.sleep(0.5)
        for head in self.started:
            if head.proc.poll() is None:
                head.proc.kill()
            kill_pids(pids_using(head.temp_dir), signal.SIGKILL)
            head.proc.wait(timeout=30)
            shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def start_head() -> Iterator:
    """start_head(args, port=..., wait_port=...) -> Head; its heads stop with the module."""
    heads = Heads()
    yield heads.start
    heads.stop_all()


@pytest.fixture(scope="session")
def jobs_head() -> Iterator[Head]:
    """One head with the Jobs API and token auth for every job-spec test of this test process:
    starting one costs seconds of both cores, and its jobs leave nothing behind on it."""
    heads = Heads()
    dashboard = free_port()
    head = heads.start(
        [
            # Logical CPUs: a sweep or ensemble driver holds one (its spec's `resources`) and
            # its trials need the rest. The custom resources are the ones the GPU spec's
            # replicas and shards ask for (cluster/*.yaml gives them to GPU workers and the head).
            "--num-cpus=4",
            '--resources={"replica": 2, "ps": 4}',
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        port=free_port(),
        wait_port=dashboard,
    )
    head.dashboard_url = f"http://127.0.0.1:{dashboard}"
    try:
        yield head
    finally:
        heads.stop_all()


def submit_followed(
    head: Head, spec: str, *args: str, mlflow_uri: str, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`distinception submit jobs/SPEC --follow -- ARGS` as a user types it against `head`, with
    the pinned requirements left out (the head runs in the project's own virtualenv). Asserts
    the job SUCCEEDED; its own output comes back in stdout."""
    proc = distinception(
        *("submit", f"jobs/{spec}", "--address", head.dashboard_url, "--no-requirements"),
        *("--follow", "--", *args),
        code=None,
        cwd=ROOT,
        env=dict(head.env, MLFLOW_TRACKING_URI=mlflow_uri),
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.split("submitted ")[1].split()[0]
    assert f"job {job_id}: SUCCEEDED" in proc.stdout, proc.stdout[-3000:]
    return proc
