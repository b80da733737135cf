"""The replica loop on its own, over an in-memory channel (no Ray): a push per step tagged with
the versions it was computed on, the lag bound, and the tally of the shards' answers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from distinception.config import DataConfig, JobConfig, ModelConfig, PSConfig
from distinception.ps.replica_loop import ReplicaLoop

MODEL = ModelConfig(variant="bn", width=0.125, input_size=32)
BATCH = 4


class FakeStream:
    """Random batches; its position is the number of batches handed out."""

    def __init__(self, position: dict | None) -> None:
        self.start = (position or {}).get("batches", 0)
        self.yielded = 0
        self.skipped = 0

    def position(self) -> dict:
        return {"batches": self.start + self.yielded}

    def __iter__(self):
        g = torch.Generator().manual_seed(self.start)
        while True:
            x = torch.randn(BATCH, 3, 32, 32, generator=g)
            y = torch.randint(0, 4, (BATCH,), generator=g)
            self.yielded += 1
            yield x, y


def accepted(staleness: int = 0) -> dict[str, Any]:
    return {"accepted": True, "reason": "", "staleness": staleness, "version": 0}


def refused(reason: str) -> dict[str, Any]:
    return {"accepted": False, "reason": reason, "staleness": 0, "version": 0}


class FakeShards:
    """Two shards in memory. A pull loads `weights` and reports as each shard's version the
    number of pushes received before it was issued; a push is recorded and each shard answers with
    `answers[s]`, either at once (`at_once`, as a doorbell does) or through a pending handle.
    `arrive` says whether a pull in flight has arrived by the time the loop looks."""

    errors = (ConnectionError,)

    def __init__(
        self,
        total: int,
        answers: tuple[dict[str, Any] | None, ...] = (accepted(), accepted()),
        at_once: bool = False,
        arrive: bool = False,
        fail_pushes: bool = False,
    ) -> None:
        half = total // 2
        self.ranges = [(0, half), (half, total)]
        self.weights = torch.linspace(-0.01, 0.01, total)
        self.versions = [0, 0]
        self.incarnations = ["a", "b"]
        self.stale = False
        self.answers = answers
        self.at_once = at_once
        self.arrive = arrive
        self.fail_pushes = fail_pushes
        self.pushes: list[dict[str, Any]] = []
        self.finished: list[tuple[int, list]] = []
        self.lock = threading.Lock()

    def issue(self, after: list | None = None) -> tuple[int, list]:
        with self.lock:
            return len(self.pushes), list(after or [])

    def arrived(self, ticket: tuple[int, list]) -> bool:
        return self.arrive

    def finish(self, ticket: tuple[int, list], load, attempts: int = 60) -> None:
        self.finished.append(ticket)
        for a, b in self.ranges:
            load(a, b, self.weights[a:b])
        self.versions = [ticket[0]] * 2

    def push(self, grad, slot, versions, incarnations, examples, fingerprint, transfer_dtype):
        if self.fail_pushes:
            raise ConnectionError("shard unreachable")
        with self.lock:
            self.pushes.append(
                {
                    "grad": grad.clone(),
                    "versions": list(versions),
                    "incarnations": list(incarnations),
                    "examples": examples,
                    "fingerprint": fingerprint,
                }
            )
            n = len(self.pushes)
        if self.at_once:
            return [], list(self.answers)
        return [(n, s) for s in range(2)], []

    def wait(self, pending: list, num_returns: int, timeout: float) -> tuple[list, list]:
        return pending[:num_returns], pending[num_returns:]

    def answer(self, handle: tuple[int, int]) -> dict[str, Any] | None:
        return self.answers[handle[1]]

    def gradient_slots(self, owner: str, numel: int, count: int) -> list:
        return []


def make_loop(lag: int = 0, slowdown: float = 1.0, **fake: Any) -> tuple[ReplicaLoop, FakeShards]:
    torch.manual_seed(0)
    cfg = JobConfig(
        model=MODEL,
        data=DataConfig(batch_size=BATCH),
        ps=PSConfig(n_fetch=1, n_push=1, max_lag=lag),
    )
    made: list[FakeShards] = []

    def connect(count):
        made.append(FakeShards(total, **fake))
        return made[0]

    from distinception.ps.replica import build_flat_model

    total = build_flat_model(cfg.model, 4)[3].total
    loop = ReplicaLoop(0, cfg, 4, FakeStream, connect, slowdown=slowdown)
    return loop, made[0]


def drain(loop: ReplicaLoop) -> None:
    """Wait until the communication thread has sent everything handed to it."""
    loop.comm.submit(lambda: None).result(timeout=60)


@pytest.fixture
def loops():
    made: list[ReplicaLoop] = []
    yield made
    for loop in made:
        loop.comm.shutdown(wait=True)
        loop.data.close()


def test_every_step_pushes_a_gradient_tagged_with_the_versions_it_was_computed_on(loops):
    loop, shards = make_loop(lag=0)
    loops.append(loop)
    out = loop.train(4)
    drain(loop)
    assert out["steps"] == 4 and out["examples"] == 4 * BATCH
    assert len(shards.pushes) == 4
    for k, push in enumerate(shards.pushes):
        # Without lag, step k waits for the pull issued behind push k-1: k pushes applied.
        assert push["versions"] == [k, k]
        assert push["incarnations"] == ["a", "b"]
        assert push["examples"] == BATCH
        assert push["fingerprint"] == loop.core.layout.fingerprint
        assert torch.isfinite(push["grad"]).all() and push["grad"].abs().sum() > 0
    # Every pulled value was loaded into the weights the model computes with.
    torch.testing.assert_close(loop.core.flat, shards.weights)
    assert loop.counters["pushes"] == 4
    assert out["position"] == {"batches": 4}


@pytest.mark.parametrize(("lag", "waits"), [(0, 5), (1, 3)])
def test_the_lag_bound_waits_for_the_oldest_pull_only_when_no_more_lag_is_allowed(
    loops, lag, waits
):
    loop, shards = make_loop(lag=lag, arrive=False)
    loops.append(loop)
    loop.train(5)
    drain(loop)
    # The first pull, then one wait every (lag + 1) steps.
    assert len(shards.finished) == waits
    if lag == 1:
        # Step 2 waits for the pull behind push 1, step 4 for the one behind push 3 (the pull
        # behind push 2 was superseded): each the oldest still in flight.
        assert [after for _, after in shards.finished[1:]] == [[(1, 0), (1, 1)], [(3, 0), (3, 1)]]
        assert [p["versions"] for p in shards.pushes] == [[0, 0], [0, 0], [1, 1], [1, 1], [3, 3]]


def test_a_pull_that_has_arrived_is_loaded_at_once_within_the_lag_bound(loops):
    loop, shards = make_loop(lag=1, arrive=True)
    loops.append(loop)
    for _ in range(4):
        loop.train(1)
        drain(loop)  # the pull behind each push is in before the next step looks
    assert len(shards.finished) == 4
    assert [after for _, after in shards.finished[1:]] == [[(k, 0), (k, 1)] for k in (1, 2, 3)]
    assert loop.lag == 0


@pytest.mark.parametrize("at_once", [False, True])
def test_answers_are_tallied_whether_they_come_at_once_or_later(loops, at_once):
    loop, shards = make_loop(answers=(accepted(staleness=2), refused("stale")), at_once=at_once)
    loops.append(loop)
    loop.train(3)
    drain(loop)
    counters = loop.counters
    assert counters["pushes"] == 3
    assert counters["accepted"] == 3 and counters["staleness_sum"] == 6
    assert counters["refused_stale"] == 3
    assert counters["pushes_shared"] == (6 if at_once else 0)
    assert not shards.stale


def test_lost_and_restarted_answers_make_the_channel_reattach(loops):
    loop, shards = make_loop(answers=(None, refused("restarted")))
    loops.append(loop)
    loop.train(1)
    drain(loop)
    assert loop.counters["push_lost"] == 1 and loop.counters["refused_restarted"] == 1
    assert shards.stale


def test_a_push_that_cannot_be_sent_is_counted_lost_and_training_goes_on(loops):
    loop, shards = make_loop(lag=0, fail_pushes=True)
    loops.append(loop)
    out = loop.train(3)
    assert out["steps"] == 3
    # Steps 2 and 3 find the pull behind the previous push lost, count it once, and pull afresh
    # (the third push is still pending when training stops).
    assert loop.counters["push_lost"] == 2 and loop.counters["pushes"] == 0
    assert [ticket for ticket in shards.finished] == [(0, [])] * 3


def test_seek_reopens_the_stream_at_the_recorded_position(loops):
    loop, _ = make_loop()
    loops.append(loop)
    loop.restarted = True
    assert loop.seek({"batches": 7}) == {"batches": 7}
    out = loop.train(2)
    assert out["position"] == {"batches": 9}
    assert out["restarted"] is False and out["resumed_from"] == {"batches": 7}


@pytest.mark.parametrize("slowdown", [1.0, 3.0])
def test_a_straggler_sleeps_its_factor_minus_one_times_each_steps_compute(
    loops, slowdown, monkeypatch
):
    import distinception.ps.replica_loop as replica_loop

    slept: list[tuple[float, float]] = []
    monkeypatch.setattr(replica_loop, "straggle", lambda f, s: slept.append((f, s)))
    loop, _ = make_loop(slowdown=slowdown)
    loops.append(loop)
    loop.train(3)
    drain(loop)
    assert [f for f, _ in slept] == [slowdown] * 3
    assert all(s > 0 for _, s in slept)  # measured compute time of each step
