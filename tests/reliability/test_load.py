"""Load: many small replicas pulling from and pushing to one real shard actor for a while.

No deadlock (every replica returns), object-store memory bounded whatever the number of updates,
and updates keep flowing in every window. The figures are printed (and appended to
$DISTINCEPTION_FAULT_REPORT, see conftest.py); a longer run is the same test with more seconds:

    DISTINCEPTION_LOAD_REPLICAS=16 DISTINCEPTION_LOAD_SECONDS=180 \
        .venv/bin/pytest tests/reliability/test_load.py -s
"""

from __future__ import annotations

import itertools
import os
import statistics
import time

import numpy as np
import pytest
import ray
import torch

from distinception.ps.actors import RPC_TIMEOUT_S, ShardSpec, remote_shard
from distinception.ps.coordinator import object_store_bytes
from distinception.ps.layout import ParamLayout
from distinception.recipes import get_recipe

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("DISTINCEPTION_LOAD_SECONDS", "20"))
REPLICAS = int(os.environ.get("DISTINCEPTION_LOAD_REPLICAS", "8"))
WINDOW_S = 4.0


@ray.remote(num_cpus=0.05, max_restarts=0)
class Pusher:
    """The replica's wire protocol without the model: pull every shard version it can, push a
    gradient computed "on" it, at most two pushes in flight (as `ReplicaActor` does)."""

    def __init__(self, seed: int, size: int, fingerprint: str) -> None:
        torch.set_num_threads(1)
        self.grad = np.random.default_rng(seed).normal(0, 1e-3, size).astype(np.float32)
        self.fingerprint = fingerprint

    def ready(self) -> bool:
        return True

    def run(self, shard, seconds: float) -> dict:
        deadline = time.monotonic() + seconds
        counts = {"accepted": 0, "refused": 0, "pulls": 0}
        in_flight: list = []
        while time.monotonic() < deadline:
            version, incarnation, [ref] = ray.get(shard.pull.remote(), timeout=RPC_TIMEOUT_S)
            weights = ray.get(ref, timeout=RPC_TIMEOUT_S)
            assert weights.shape == self.grad.shape
            counts["pulls"] += 1
            in_flight.append(
                shard.push.remote(self.grad, version, 1, self.fingerprint, incarnation)
            )
            if len(in_flight) > 2:
                done, in_flight = ray.wait(in_flight, num_returns=1, timeout=RPC_TIMEOUT_S)
                for r in ray.get(done):
                    counts["accepted" if r["accepted"] else "refused"] += 1
        for r in ray.get(in_flight, timeout=RPC_TIMEOUT_S):
            counts["accepted" if r["accepted"] else "refused"] += 1
        return counts


def test_many_replicas_pushing_to_one_shard(ray_local, report):
    cfg = get_recipe("tiny")
    layout = ParamLayout.from_module(torch.nn.Linear(512, 512))  # 1 MiB of float32
    init = ray.put(np.zeros(layout.total, dtype=np.float32))
    spec = ShardSpec(0, 0, layout.total, layout, cfg, examples_per_epoch=10**6)
    shard = remote_shard(cfg).remote(spec, [init])
    ray.get(shard.ready.remote(), timeout=RPC_TIMEOUT_S)
    pushers = [Pusher.remote(i, layout.total, layout.fingerprint) for i in range(REPLICAS)]
    # Worker processes start a couple at a time on 2 cores: the clock starts once all are up.
    ray.get([p.ready.remote() for p in pushers], timeout=10 * RPC_TIMEOUT_S)
    refs = [p.run.remote(shard, SECONDS) for p in pushers]

    windows: list[tuple[float, int, int]] = []  # (time, version, store bytes)
    start = time.monotonic()
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=WINDOW_S)
        version = ray.get(shard.stats.remote(), timeout=RPC_TIMEOUT_S)["version"]
        windows.append((time.monotonic() - start, version, object_store_bytes()))
        assert time.monotonic() - start < SECONDS + RPC_TIMEOUT_S, "replicas never returned"
    counts = ray.get(refs, timeout=RPC_TIMEOUT_S)
    stats = ray.get(shard.stats.remote(), timeout=RPC_TIMEOUT_S)
    # Once the replicas are done, what stays is the shard's current version and `init`: Ray
    # frees the rest on its own schedule (seconds on a loaded machine), so wait for it. A
    # shard that kept old versions would stay at hundreds of vectors.
    vector = layout.total * 4
    drained = object_store_bytes()
    drain_deadline = time.monotonic() + 30
    while drained > 4 * vector and time.monotonic() < drain_deadline:
        time.sleep(0.5)
        drained = object_store_bytes()
    for actor in [*pushers, shard]:
        ray.kill(actor)

    accepted = sum(c["accepted"] for c in counts)
    assert stats["version"] == accepted and not stats["refused"]
    assert all(c["accepted"] > 0 for c in counts), counts  # nobody starved
    # Steady flow: every full window while all replicas ran applied updates.
    full = [w for w in windows if w[0] <= SECONDS]
    rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(full) if b[0] > a[0]]
    # From the first window that applied updates on: under CI's load the shard's first applies
    # (fused optimizer set-up, first mapped pages) once took a whole window ([0.0, 51.6, 119.3]).
    while rates and rates[0] == 0:
        rates.pop(0)
    assert len(rates) >= 2 and min(rates) > 0, rates
    # Bounded store: it holds what is in flight plus objects Ray has not freed yet, a number
    # that does not grow with the updates applied. Every version ever published would be
    # `accepted` vectors; the store holds a fraction of that, within half its capacity.
    store = [w[2] for w in windows if w[2] >= 0]
    capacity = ray.available_resources().get("object_store_memory", 400 * 2**20)
    assert max(store) < max(capacity, 400 * 2**20) / 2, (max(store), vector)
    assert accepted * vector > 4 * max(store), (accepted, max(store))
    # Once the replicas are done the store drains to a few vectors: nothing is kept.
    assert drained <= 4 * vector, (drained, vector)
    # No growth with the updates applied: a shard that kept its versions would add a vector per
    # update. Single windows peak while Ray catches up on frees (seen at 1.7x the early peak on
    # a slow machine, and the lowest later window 20 vectors above the early peak while a
    # whole CI run loaded the machine), so the test is the lowest later window against a
    # quarter of what keeping every version published since the first half would add.
    sized = [w for w in windows if w[2] >= 0]
    half = len(sized) // 2
    low = min(sized[half:], key=lambda w: w[2])
    kept_every_version = (low[1] - sized[half - 1][1]) * vector
    assert low[2] - max(w[2] for w in sized[:half]) <= kept_every_version / 4, (store, vector)
    report(
        "load_one_shard",
        {
            "replicas": REPLICAS,
            "seconds": round(windows[-1][0], 1),
            "vector_mib": round(vector / 2**20, 2),
            "updates": accepted,
            "updates_per_s_mean": round(statistics.mean(rates), 1),
            "updates_per_s_min": round(min(rates), 1),
            "updates_per_s_max": round(max(rates), 1),
            "updates_per_s_cv": round(statistics.pstdev(rates) / statistics.mean(rates), 3),
            "store_mib_max": round(max(store) / 2**20, 1),
            "store_mib_first_half": round(statistics.mean(store[: len(store) // 2]) / 2**20, 1),
            "store_mib_second_half": round(statistics.mean(store[len(store) // 2 :]) / 2**20, 1),
            "store_mib_after": round(drained / 2**20, 2),
            "per_replica_updates": sorted(c["accepted"] for c in counts),
        },
    )
