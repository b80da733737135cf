"""The replica scheduler's decisions, with fake actors (no Ray is started)."""

from __future__ import annotations

from collections import Counter

from distinception.api import load_config
from distinception.ps.control.replicas import QUEUED, ReplicaScheduler


class Ready:
    def __init__(self, slot: int) -> None:
        self.slot = slot

    def remote(self) -> str:
        return f"built-{self.slot}"


class FakeActor:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.train = self  # `actor.train.remote(steps)` queues a call
        self.ready = Ready(slot)

    def remote(self, steps: int) -> tuple[int, int, object]:
        return (self.slot, steps, object())


def scheduler(warm: int) -> tuple[ReplicaScheduler, list[int]]:
    spawned: list[int] = []

    def spawn(slot: int, position: dict | None) -> FakeActor:
        spawned.append(slot)
        return FakeActor(slot)

    cfg = load_config("tiny", overrides=["ps.num_replicas=3", f"ps.warm_start_updates={warm}"])
    return ReplicaScheduler(cfg, Counter(), spawn), spawned


def test_a_warm_start_runs_one_replica_until_every_shard_has_its_updates():
    replicas, spawned = scheduler(warm=5)
    replicas.start()
    assert spawned == [0] and len(replicas.pending) == QUEUED
    replicas.end_warm_start([5, 4])  # one shard short
    assert spawned == [0]
    replicas.end_warm_start([5, 6])
    assert spawned == [0, 1, 2] and len(replicas.pending) == 3 * QUEUED


def test_replicas_held_back_by_a_warm_start_are_not_started_once_the_job_stops():
    replicas, spawned = scheduler(warm=5)
    replicas.start()
    replicas.stop()
    replicas.end_warm_start([9, 9])
    assert spawned == [0] and len(replicas.pending) == QUEUED


def test_without_a_warm_start_every_replica_starts_at_once():
    replicas, spawned = scheduler(warm=0)
    replicas.start()
    assert spawned == [0, 1, 2] and len(replicas.pending) == 3 * QUEUED


def test_the_clock_waits_for_every_started_replica_to_be_built(monkeypatch):
    waited: list[tuple[list, int]] = []

    def fake_wait(refs, num_returns, timeout):
        waited.append((list(refs), num_returns))
        return refs, []

    monkeypatch.setattr("distinception.ps.control.replicas.ray.wait", fake_wait)
    replicas, _ = scheduler(warm=0)
    replicas.start()
    replicas.wait_built()
    assert waited == [(["built-0", "built-1", "built-2"], 3)]
