"""Elastic replicas: keep up to a target number of replicas on whatever nodes the cluster has.

The pool asks the autoscaler for room for its target (`request_resources`, a persistent hint
that replaces the previous one), creates replica actors for empty slots and hands them to the
coordinator once they answer `ready()`. An actor that cannot be placed yet waits inside Ray until
a node arrives; the pool only ever looks at it with `ray.wait(..., timeout=0)`, so the training
loop never blocks on capacity. A replica lost with its node frees its slot, which is filled again
when capacity returns.

A slot is a replica's share of the data (consumer `slot` of `num_replicas`); a new replica takes
the free slot that has read the least, so shares stay even while fewer replicas run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayError

log = logging.getLogger(__name__)


def request_capacity(bundles: list[dict[str, float]]) -> bool:
    """Tell the autoscaler the cluster should fit `bundles` (empty: withdraw the request)."""
    from ray.autoscaler.sdk import request_resources

    try:
        request_resources(bundles=bundles)
    except Exception as err:  # a hint only: a cluster without an autoscaler must still train
        log.warning("could not ask the autoscaler for capacity: %s", err)
        return False
    return True


class ReplicaPool:
    """Starts replicas for free slots without blocking; reports those that came up."""

    def __init__(
        self,
        create: Callable[[int], Any],
        slots: int,
        bundle: dict[str, float],
        progress: Callable[[int], tuple[int, int]],
    ) -> None:
        self.create = create
        self.slots = slots
        self.bundle = {k: v for k, v in bundle.items() if v}
        self.progress = progress
        self.target = 0
        self.starting: dict[ray.ObjectRef, tuple[int, Any]] = {}
        self.nodes: dict[int, str] = {}
        self.joined = 0
        self.failed_starts = 0
        self.requested = False

    def set_target(self, target: int) -> None:
        """Aim for `target` replicas and ask the autoscaler for room for all of them."""
        self.target = min(target, self.slots)
        self.requested = request_capacity([dict(self.bundle) for _ in range(self.target)])

    def _free_slot(self, active: dict[int, Any]) -> int:
        busy = set(active) | {slot for slot, _ in self.starting.values()}
        free = [s for s in range(self.slots) if s not in busy]
        return min(free, key=lambda s: (self.progress(s), s))

    def poll(self, active: dict[int, Any]) -> list[tuple[int, Any]]:
        """Start replicas for empty slots; return (slot, actor) for each one that is now ready."""
        while len(active) + len(self.starting) < self.target:
            slot = self._free_slot(active)
            actor = self.create(slot)
            self.starting[actor.ready.remote()] = (slot, actor)
        if not self.starting:
            return []
        ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        joined = []
        for ref in ready:
            slot, actor = self.starting.pop(ref)
            try:
                info = ray.get(ref, timeout=0)
            except RayError as err:
                # Its node went away while it started: the slot is free for the next poll.
                self.failed_starts += 1
                log.warning("replica %d failed to start (%s)", slot, type(err).__name__)
                ray.kill(actor, no_restart=True)
                continue
            self.nodes[slot] = str(info.get("node_id", ""))
            self.joined += 1
            log.info("replica %d up on node %s", slot, self.nodes[slot][:12])
            joined.append((slot, actor))
        return joined

    def lost(self, slot: int) -> None:
        self.nodes.pop(slot, None)

    def node_count(self) -> int:
        return len(set(self.nodes.values()))

    def close(self) -> None:
        """Stop replicas still starting and withdraw the capacity request."""
        for _, actor in self.starting.values():
            ray.kill(actor, no_restart=True)
        self.starting.clear()
        self.target = 0
        if self.requested:
            request_capacity([])
            self.requested = False
