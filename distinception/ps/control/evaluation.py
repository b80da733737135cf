"""Evaluations while a job trains, stamped at the moment they were asked for.

The averager scores the weights it holds when asked, and scoring takes seconds; stamping a
result when it arrives would shift every curve to the right by the scoring time. So the
evaluator remembers the examples and training seconds of each request. One request at a time,
polled without waiting: the driver never blocks on the averager while replicas train. A failed
evaluation is counted and skipped, never retried: the next one comes on the clock.

Under `run.eval_scoring: after` a request only has the averager hold the weights, and all the
held weights are scored once training has ended (`drain`), each reported at its request's
examples and seconds: scoring then takes no time from the replicas, on a machine where they
share cores with the averager.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from typing import Any

import ray
from ray.exceptions import RayError

from distinception.ps.actors import RPC_TIMEOUT_S

log = logging.getLogger(__name__)

#: An evaluation to report: (metrics, examples, training seconds) at its request.
Point = tuple[dict[str, float], int, float]


class Evaluator:
    """Asks the averager for an evaluation every `interval_s`, one in flight at a time."""

    def __init__(
        self,
        averager: Any,
        faults: Counter[str],
        interval_s: float,
        *,
        started: float,
        examples: int,
        seconds: float,
        after: bool = False,
    ) -> None:
        self.averager = averager
        self.faults = faults
        self.interval_s = interval_s
        self.after = after
        self.last_at = started
        self.ref: ray.ObjectRef | None = None
        #: Examples and training seconds when the evaluation in flight was asked for.
        self.asked_at = (examples, seconds)
        #: Under `after`: each held request's answer, examples and training seconds.
        self.held: list[tuple[ray.ObjectRef, int, float]] = []

    def tick(self, now: float, examples: int, seconds: float, stopping: bool) -> Point | None:
        """Ask for an evaluation when one is due; return the one that finished, if any."""
        if self.after:
            if now - self.last_at >= self.interval_s and not stopping:
                key = len(self.held)
                self.held.append((self.averager.hold.remote(key), examples, seconds))
                self.last_at = now
            return None
        if self.ref is None and now - self.last_at >= self.interval_s and not stopping:
            self.ref = self.averager.evaluate.remote()
            self.asked_at = (examples, seconds)
            self.last_at = now
        if self.ref is not None and ray.wait([self.ref], timeout=0)[0]:
            ref, self.ref = self.ref, None
            return self._done(ref, *self.asked_at)
        return None

    def _done(self, ref: ray.ObjectRef, examples: int, seconds: float) -> Point | None:
        try:
            res = ray.get(ref, timeout=RPC_TIMEOUT_S)
        except RayError as err:
            self.faults["eval_failed"] += 1
            log.warning("evaluation failed: %s", err)
            return None
        return _errors(res), examples, seconds

    def drain(self) -> list[Point]:
        """Wait (bounded) for the evaluation still in flight before the job finishes; the job
        ends with its own final evaluation, so this one is not reported. Under `after`, score
        the held weights now and return them, in the order they were held."""
        if self.ref is not None:
            with contextlib.suppress(RayError):
                ray.get(self.ref, timeout=RPC_TIMEOUT_S)
        if not self.held:
            return []
        held, self.held = self.held, []
        # Every hold done before the scoring starts (the averager runs calls on several
        # threads, so order of sending is not order of running); a hold that failed leaves its
        # key out of the answer, and is counted there.
        for ref, _, _ in held:
            with contextlib.suppress(RayError):
                ray.get(ref, timeout=RPC_TIMEOUT_S)
        try:
            # Scoring takes seconds each: a deadline per held evaluation.
            scored = ray.get(self.averager.score_held.remote(), timeout=RPC_TIMEOUT_S * len(held))
        except RayError as err:
            self.faults["eval_failed"] += len(held)
            log.warning("scoring the held evaluations failed: %s", err)
            return []
        points = []
        for key, (_, examples, seconds) in enumerate(held):
            if key not in scored:  # held by an earlier life of a restarted averager
                self.faults["eval_failed"] += 1
                continue
            points.append((_errors(scored[key]), examples, seconds))
        return points


def _errors(res: dict[str, Any]) -> dict[str, float]:
    """The error rates of an averager's evaluation: what is reported as metrics."""
    return {k: float(v) for k, v in res.items() if k.endswith("_error")}
