"""`distinception bench throughput`, `bench gpu` and the round trip at the tiniest sizes,
through the real components: the parameter server, the Ray docs pattern, Ray Train DDP over
gloo, the local loop, the GPU script on CPU. Checks that the tables and plots are written and
the figures are sane; never their speed."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
from as_typed import distinception
from bench_tables import png, table_rows

pytestmark = pytest.mark.integration


def test_throughput_compares_four_systems_with_and_without_a_straggler(tmp_path):
    from distinception.bench.throughput import DDP, DOCS, LOCAL, PS

    args = ("--replicas", "2", "--quick", "--recipe", "tiny", "--seconds", "1", "--steps", "8")
    proc = distinception("bench", "throughput", *args, "--out", str(tmp_path))
    text = (tmp_path / "throughput.md").read_text()
    assert text.strip() in proc.stdout  # the table printed is the table written
    assert f"Command: `distinception bench throughput {' '.join(args)}`" in text
    rows = table_rows(text, "all at full speed") + table_rows(text, "worker 0 slowed 2x")
    systems = {(r[0], r[1].removesuffix(" (no workers to slow)")) for r in rows}
    assert systems == {
        (s, x) for s in ("all at full speed", "worker 0 slowed 2x") for x in (PS, DOCS, DDP, LOCAL)
    }
    for row in rows:
        images_per_s, updates_per_s = float(row[2]), float(row[3])
        assert images_per_s > 0 and math.isfinite(images_per_s), row
        assert updates_per_s > 0 and math.isfinite(updates_per_s), row
    png(str(tmp_path / "throughput.png"))


@pytest.mark.parametrize("transport", ["auto", "object_store"])
def test_round_trip_benchmark_goes_through_the_replicas_transport(transport, monkeypatch):
    from distinception.bench.common import local_ray
    from distinception.bench.roundtrip import bench_p1
    from distinception.ps.transport import shm

    # The job directories this benchmark makes (other test processes may make their own).
    made: list[str] = []
    job_dir = shm.job_dir

    def recorded(token: str | None = None) -> str:
        made.append(job_dir(token))
        return made[-1]

    monkeypatch.setattr(shm, "job_dir", recorded)
    with local_ray():
        p1 = bench_p1(repeats=1, num_shards=2, transport=transport)
    assert p1["shared_shards"] == (2 if transport == "auto" else 0)
    assert p1["bytes"] == 4 * 13_378_280  # the faithful GoogLeNet with its aux heads
    for key in ("memcpy_s", "ours_s", "docs_s", "pull_s", "push_s"):
        assert 0 < p1[key] < 60, (key, p1[key])
    assert len(made) == (1 if transport == "auto" else 0)  # one job directory, shared memory only
    assert not [d for d in made if os.path.exists(d)]  # its shared memory is gone


def test_gpu_script_runs_without_ray_on_cpu():
    code = (
        "import sys; sys.modules['ray'] = None; sys.modules['mlflow'] = None\n"
        "from distinception.bench.gpu import main\n"
        "main(['--device', 'cpu', '--batch', '2', '--steps', '1', '--size', '32'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "replica (flat buffers" in proc.stdout and "Replica / local" in proc.stdout
    # ... and as a user types it.
    proc = distinception(
        *("bench", "gpu", "--device", "cpu", "--batch", "2", "--steps", "1", "--size", "32")
    )
    assert "Replica / local" in proc.stdout


def test_bench_command_rejects_bad_replicas():
    proc = distinception("bench", "throughput", "--replicas", "0", code=2)
    assert proc.stderr.strip() == ("distinception: error: --replicas=0: expected an integer >= 1")
    proc = distinception("bench", "staleness", "--quick", "--set", "ps.nope=1", code=2)
    assert proc.stderr.strip().startswith("distinception: error: ps.nope: unknown key; expected")
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = distinception("bench", "gpu", "--device", "cpu", "--size", "8", code=2)
    assert proc.stderr.strip() == "distinception: error: --size=8: expected an integer >= 32"
