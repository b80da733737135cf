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

    def remote(self, position: dict) -> tuple[str, int, object]:
        self.sought.append(self.slot)
        return ("sought", self.slot, object())


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


def _unavailable() -> BaseException:
    from ray.exceptions import ActorUnavailableError

    return ActorUnavailableError("The actor is restarting", None)


def _collect(
    monkeypatch, outcomes: list[object], seeks: list[object] = ()
) -> tuple[ReplicaScheduler, list[int], list[int]]:
    """Collect replica 0's calls, finishing in turn with `outcomes` (stats, or an error
    raised by `ray.get`), each seek in flight answered before the next call: with the next of
    `seeks` ("restarting", "dead"), or its position once they run out. Then the seeks still
    owed are answered. The scheduler, the replicas sought and the replicas spawned."""
    from ray.exceptions import ActorDiedError, RayActorError

    monkeypatch.setattr("distinception.ps.control.replicas.RETRY_S", 0.0)
    replicas, spawned = scheduler(warm=0)
    replicas.start()
    replicas.begin()
    sought: list[int] = []
    for actor in replicas.replicas.values():
        actor.seek = Seek(sought, actor.slot)
    results: dict = {}
    answers = list(seeks)

    def fake_get(ref, timeout=None):
        if isinstance(ref, tuple) and ref[0] == "sought":
            answer = answers.pop(0) if answers else None
            if answer == "restarting":
                raise _unavailable()
            if answer == "dead":
                raise ActorDiedError()
            return {"epoch": 0, "offset": 32}
        out = results[id(ref)]
        if isinstance(out, BaseException):
            raise out
        return out

    def answer_seeks() -> None:
        for _ in range(10):
            replicas.collect(list(replicas.seeks))
            if not replicas.recovering:
                return

    monkeypatch.setattr("distinception.ps.control.replicas.ray.get", fake_get)
    for outcome in outcomes:
        answer_seeks()
        ref = next(r for r, slot in replicas.pending.items() if slot == 0)
        results[id(ref)] = RayActorError() if outcome == "died" else _stats(0, outcome)
        replicas.collect([ref])
    answer_seeks()
    return replicas, sought, spawned


def test_a_replica_restarted_between_calls_is_counted_once_and_sought_back(monkeypatch):
    """No call failed: the first call of its restarted life is the only sign of the death."""
    replicas, sought, _ = _collect(monkeypatch, [False, True, True, False])
    assert replicas.faults["replica_failures"] == 1 and sought == [0, 0]


def test_one_death_seen_as_two_failed_calls_then_a_restarted_call_is_one_failure(monkeypatch):
    replicas, sought, _ = _collect(monkeypatch, ["died", "died", True, False])
    assert replicas.faults["replica_failures"] == 1 and 0 in sought


def test_each_death_of_a_replica_is_counted(monkeypatch):
    replicas, _, _ = _collect(monkeypatch, [True, False, "died", "died", False, True, False])
    assert replicas.faults["replica_failures"] == 3


def test_a_replica_ray_is_restarting_is_asked_again_and_sought_back_not_replaced(monkeypatch):
    """Its calls, and the seeks sent while Ray restarts it, fail at once ("unavailable"): the
    seek is sent again until its new life answers. Replacing it would waste the restart Ray
    is making, and a replica that crashes at every start would be replaced forever."""
    replicas, sought, spawned = _collect(
        monkeypatch, [False, "died", "died"], seeks=["restarting", "restarting"]
    )
    assert replicas.faults["replica_failures"] == 1
    assert replicas.faults["replica_replaced"] == 0 and spawned == [0, 1, 2]
    assert sought == [0, 0, 0] and not replicas.recovering
    assert replicas.replica_stats[0]["resumed_from"] == {"epoch": 0, "offset": 32}
    assert sum(slot == 0 for slot in replicas.pending.values()) == QUEUED


def test_a_replica_out_of_restarts_is_replaced_at_its_data_position(monkeypatch):
    replicas, _, spawned = _collect(monkeypatch, [False, "died", "died"], seeks=["dead"])
    assert replicas.faults["replica_replaced"] == 1 and spawned == [0, 1, 2, 0]
    assert replicas.replica_stats[0]["resumed_from"] == {"epoch": 0, "offset": 32}
    assert sum(slot == 0 for slot in replicas.pending.values()) == QUEUED


def test_a_replica_that_is_not_back_in_time_is_replaced(monkeypatch):
    monkeypatch.setattr("distinception.ps.control.replicas.RPC_TIMEOUT_S", 0.0)
    replicas, _, spawned = _collect(monkeypatch, [False, "died", "died"], seeks=["restarting"])
    assert replicas.faults["replica_replaced"] == 1 and spawned == [0, 1, 2, 0]


def test_the_other_replicas_train_while_one_is_sought_back(monkeypatch):
    """Waiting for a restart holds no one: replica 1's call is collected and queued again."""
    replicas, _, _ = _collect(monkeypatch, [False, "died", "died"], seeks=["restarting"] * 10)
    assert 0 in replicas.recovering
    from distinception.ps.control import replicas as module

    ref = next(r for r, slot in replicas.pending.items() if slot == 1)
    monkeypatch.setattr(module.ray, "get", lambda ref, timeout=None: _stats(1, False))
    assert len(replicas.collect([ref])) == 1
    assert sum(slot == 1 for slot in replicas.pending.values()) == QUEUED
    assert replicas.running


def _end_of_job(
    monkeypatch, answers: dict[int, object], down: set[int] = frozenset(), seeks: list = ()
):
    """A job whose calls are all in, ending: replica i answers `ready` with `answers[i]`
    (restarted or not, "dead", or a list of those and "restarting", one per ask), and each seek
    with the next of `seeks` (then its position); the faults counted, the replicas sought and
    the spawns."""
    from ray.exceptions import RayActorError

    monkeypatch.setattr("distinception.ps.control.replicas.RETRY_S", 0.0)
    replicas, spawned = scheduler(warm=0)
    replicas.start()
    replicas.begin()
    replicas.stop()
    replicas.pending.clear()
    replicas.down |= set(down)
    replicas.replica_stats = {i: _stats(i, False) for i in replicas.replicas}
    sought: list[int] = []
    for actor in replicas.replicas.values():
        actor.seek = Seek(sought, actor.slot)
    seek_answers = list(seeks)

    def fake_get(ref, timeout=None):
        slot = int(ref.split("-")[1]) if isinstance(ref, str) else ref[1]
        answer = answers[slot]
        if isinstance(ref, tuple):
            answer = seek_answers.pop(0) if seek_answers else answer
        elif isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        if answer == "dead":
            raise RayActorError()
        if answer == "restarting":
            raise _unavailable()
        if isinstance(ref, tuple):
            return {"epoch": 0, "offset": 32}
        return {"index": slot, "restarted": answer}

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


def test_a_replica_ray_is_restarting_at_the_end_is_asked_again_and_sought_back(monkeypatch):
    """Killed as its last call came in: Ray is restarting it when the job ends, so it is
    unavailable for a moment, and its restart is counted and its new life sought back."""
    replicas, sought, spawned = _end_of_job(
        monkeypatch,
        {0: False, 1: ["restarting", "restarting", True], 2: False},
        seeks=["restarting"],
    )
    assert replicas.faults["replica_failures"] == 1 and sought == [1, 1]
    assert replicas.replica_stats[1]["resumed_from"] == {"epoch": 0, "offset": 32}
    assert replicas.faults["replica_replaced"] == 0 and spawned == [0, 1, 2]


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
