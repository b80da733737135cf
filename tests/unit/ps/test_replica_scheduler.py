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
    replicas.begin()
    assert spawned == [0] and len(replicas.pending) == QUEUED
    replicas.end_warm_start([5, 4])  # one shard short
    assert spawned == [0]
    replicas.end_warm_start([5, 6])
    assert spawned == [0, 1, 2] and len(replicas.pending) == 3 * QUEUED


def test_replicas_held_back_by_a_warm_start_are_not_started_once_the_job_stops():
    replicas, spawned = scheduler(warm=5)
    replicas.start()
    replicas.begin()
    replicas.stop()
    replicas.end_warm_start([9, 9])
    assert spawned == [0] and len(replicas.pending) == QUEUED


def test_without_a_warm_start_every_replica_starts_at_once():
    replicas, spawned = scheduler(warm=0)
    replicas.start()
    # Created, to be built beside the shards, but no call before the job's clock starts.
    assert spawned == [0, 1, 2] and not replicas.pending
    replicas.begin()
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


class Seek:
    def __init__(self, sought: list[int], slot: int) -> None:
        self.sought, self.slot = sought, slot

    def remote(self, position: dict) -> tuple[str, int]:
        self.sought.append(self.slot)
        return ("sought", self.slot)


def _stats(slot: int, restarted: bool) -> dict:
    return {
        "index": slot,
        "steps": 2,
        "examples": 32,
        "wall_s": 0.1,
        "timings": {"compute_s": 0.08},
        "position": {"epoch": 0, "offset": 32},
        "restarted": restarted,
        "resumed_from": None,
    }


def _collect(monkeypatch, outcomes: list[object]) -> tuple[Counter, list[int]]:
    """Collect replica 0's calls, finishing in turn with `outcomes` (stats, or an error
    raised by `ray.get`); the faults counted and the replicas sought back."""
    from ray.exceptions import RayActorError

    replicas, _ = scheduler(warm=0)
    replicas.start()
    replicas.begin()
    sought: list[int] = []
    for actor in replicas.replicas.values():
        actor.seek = Seek(sought, actor.slot)
    results: dict = {}

    def fake_get(ref, timeout=None):
        if isinstance(ref, tuple) and ref[0] == "sought":
            return {"epoch": 0, "offset": 32}
        out = results[id(ref)]
        if isinstance(out, BaseException):
            raise out
        return out

    monkeypatch.setattr("distinception.ps.control.replicas.ray.get", fake_get)
    for outcome in outcomes:
        ref = next(r for r, slot in replicas.pending.items() if slot == 0)
        results[id(ref)] = RayActorError() if outcome == "died" else _stats(0, outcome)
        replicas.collect([ref])
    return replicas.faults, sought


def test_a_replica_restarted_between_calls_is_counted_once_and_sought_back(monkeypatch):
    """No call failed: the first call of its restarted life is the only sign of the death."""
    faults, sought = _collect(monkeypatch, [False, True, True, False])
    assert faults["replica_failures"] == 1 and sought == [0, 0]


def test_one_death_seen_as_two_failed_calls_then_a_restarted_call_is_one_failure(monkeypatch):
    faults, sought = _collect(monkeypatch, ["died", "died", True, False])
    assert faults["replica_failures"] == 1 and 0 in sought


def test_each_death_of_a_replica_is_counted(monkeypatch):
    faults, _ = _collect(monkeypatch, [True, False, "died", "died", False, True, False])
    assert faults["replica_failures"] == 3


def _end_of_job(monkeypatch, answers: dict[int, object], down: set[int] = frozenset()):
    """A job whose calls are all in, ending: replica i answers `ready` with `answers[i]`
    (restarted or not, or "dead"); the faults counted, the replicas sought and the spawns."""
    from ray.exceptions import RayActorError

    replicas, spawned = scheduler(warm=0)
    replicas.start()
    replicas.begin()
    replicas.stop()
    replicas.pending.clear()
    replicas.down |= set(down)
    sought: list[int] = []
    for actor in replicas.replicas.values():
        actor.seek = Seek(sought, actor.slot)

    def fake_wait(refs, num_returns, timeout):
        return list(refs), []

    def fake_get(ref, timeout=None):
        slot = int(ref.split("-")[1]) if isinstance(ref, str) else ref[1]
        if answers[slot] == "dead":
            raise RayActorError()
        if isinstance(ref, tuple):
            return {"epoch": 0, "offset": 32}
        return {"index": slot, "restarted": answers[slot]}

    monkeypatch.setattr("distinception.ps.control.replicas.ray.wait", fake_wait)
    monkeypatch.setattr("distinception.ps.control.replicas.ray.get", fake_get)
    replicas.find_unseen_restarts()
    return replicas, sought, spawned


def test_a_replica_killed_after_its_last_call_is_counted_at_the_end(monkeypatch):
    """No call fails and none is answered by its restarted life: only asking finds it."""
    replicas, sought, _ = _end_of_job(monkeypatch, {0: False, 1: True, 2: False})
    assert replicas.faults["replica_failures"] == 1 and sought == [1]


def test_a_death_a_call_already_saw_is_not_counted_again_at_the_end(monkeypatch):
    replicas, sought, _ = _end_of_job(monkeypatch, {0: False, 1: True, 2: False}, down={1})
    assert replicas.faults["replica_failures"] == 0 and sought == []


def test_a_replica_dead_for_good_at_the_end_is_counted_and_not_replaced(monkeypatch):
    replicas, _, spawned = _end_of_job(monkeypatch, {0: False, 1: False, 2: "dead"})
    assert replicas.faults["replica_failures"] == 1
    assert replicas.faults["replica_replaced"] == 0 and spawned == [0, 1, 2]


def test_a_replicas_totals_add_every_call_beside_its_last_one():
    replicas, _ = scheduler(warm=0)

    def call(steps: int, wall: float, **timings: float) -> dict:
        return {
            "examples": 16 * steps,
            "steps": steps,
            "wall_s": wall,
            "timings": timings,
            "restarted": False,
            "position": {},
        }

    replicas._record(0, call(10, 2.0, pull_wait_s=0.5, compute_s=1.0))
    replicas._record(0, call(5, 1.0, compute_s=0.75, push_s=0.25))
    replicas._record(1, call(3, 0.5, compute_s=0.5))
    last = replicas.replica_stats[0]
    assert last["steps"] == 5 and last["timings"] == {"compute_s": 0.75, "push_s": 0.25}
    assert last["totals"] == {
        "steps": 15,
        "wall_s": 3.0,
        "pull_wait_s": 0.5,
        "compute_s": 1.75,
        "push_s": 0.25,
    }
    assert replicas.replica_stats[1]["totals"] == {"steps": 3, "wall_s": 0.5, "compute_s": 0.5}
