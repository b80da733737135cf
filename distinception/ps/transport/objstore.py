"""The object-store channel, and the channel a Ray process uses to reach every shard.

A shard `ray.put`s each version of its weights at most once (`Publication`) and a pull is a Ray
call returning that object's ref; a push is a Ray call carrying the gradient slice. `ShardLinks`
is the `ShardChannel` of a replica or the averager: a shard on the same node with a
shared-memory file is read and rung through `shm`; any other goes through the object store.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from distinception.ps.transport import RPC_TIMEOUT_S, Load, shm
from distinception.ps.transport.wire import PushRequest, from_wire, to_wire


class Publication:
    """A shard's side of pulls: the weights of a version in the object store, put at most once
    and cached, so any number of pulls of one version cost one copy."""

    def __init__(self) -> None:
        self._published: tuple[int, ray.ObjectRef] | None = None

    def pull(
        self, version: int, incarnation: str, flat: torch.Tensor, dtype: str
    ) -> tuple[int, str, list[ray.ObjectRef]]:
        """(version, incarnation, [ref]): the ref is wrapped in a list so the caller decides
        when to fetch it."""
        if self._published is None or self._published[0] != version:
            # Dropping the previous ref lets the object store free that version once no
            # replica still holds it, which keeps object-store memory flat over a long run.
            self._published = (version, ray.put(to_wire(flat, dtype)))
        return version, incarnation, [self._published[1]]


class PullTicket(NamedTuple):
    """A pull in flight: per shard, a `pull()` call for shards reached through the object
    store (None for shards read from shared memory), and the pushes it must follow."""

    pulls: list[ray.ObjectRef | None]
    after: list[ray.ObjectRef]


def shard_handles(shards: list[Any]) -> list[Any]:
    """Shard actors from what a replica or the averager was given: handles, or the names the
    coordinator registers its shards under. Names keep actor handles out of constructor
    arguments, which Ray would have to keep in the object store for a restart (and warns about
    on the user's terminal)."""
    return [ray.get_actor(s) if isinstance(s, str) else s for s in shards]


class ShardLinks:
    """How one process (a replica or the averager) reaches every shard, and its pulls.

    A shard on this process's node that has a shared-memory file is read from it directly
    (`shm`): no call, no object-store copy. Any other shard is pulled through the object store.
    Links are (re)attached when first used and whenever a shard may have been restarted (its file
    removed, a push lost or refused as "restarted"), so a restarted shard's new file is found.
    """

    errors: tuple[type[BaseException], ...] = (RayError,)

    def __init__(
        self,
        shards: list[Any],
        ranges: list[tuple[int, int]],
        transport: str,
        count: Callable[[str], None],
    ) -> None:
        self.shards = shard_handles(shards)
        self.ranges = ranges
        self.count = count
        self.node_id = ray.get_runtime_context().get_node_id()
        self.local = shm.NodeShards(len(shards), transport != "object_store", RPC_TIMEOUT_S, count)
        self.versions = [0] * len(shards)
        self.incarnations = [""] * len(shards)
        self.stale = True

    @property
    def shared(self) -> list[shm.SharedVector | None]:
        """Per shard, its weights file mapped here, or None (reached through the object store)."""
        return self.local.vectors

    @property
    def shm_dir(self) -> str:
        return self.local.directory

    def attach(self) -> None:
        infos = ray.get([s.attach.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        for s, info in enumerate(infos):
            self.incarnations[s] = info["incarnation"]
            here = info["node_id"] == self.node_id
            self.local.link(s, info["path"], info["size"], info["bell"], here)
        self.stale = False

    def _hang_up(self, s: int) -> None:
        self.local.hang_up(s)
        self.stale = True  # the shard may come back with a new file and doorbell

    def push(
        self,
        grad: torch.Tensor,
        slot: str,
        versions: list[int],
        incarnations: list[str],
        examples: int,
        fingerprint: str,
        transfer_dtype: str,
    ) -> tuple[list[ray.ObjectRef], list[dict[str, Any] | None]]:
        """Send every shard its slice of `grad` (which lies in the shared-memory file `slot`, if
        given). A shard that reads this node's shared memory gets a doorbell request naming the
        slot; all are rung before any answer is awaited, so the shards apply in parallel, and
        their answers are returned (None for a shard that could not be reached). Any other
        shard gets a Ray call, through the object store unless it can read the slot; those
        calls are returned as refs, answered later."""
        refs: list[ray.ObjectRef] = []
        rung: list[tuple[int, shm.Doorbell]] = []
        answers: list[dict[str, Any] | None] = []
        for s, shard in enumerate(self.shards):
            request = PushRequest(slot, versions[s], examples, fingerprint, incarnations[s])
            shared = bool(slot) and self.local.vectors[s] is not None
            bell = self.local.bell(s) if shared else None
            if bell is not None:
                try:
                    bell.ring(request.message())
                    rung.append((s, bell))
                    continue
                except OSError:
                    self._hang_up(s)
                    answers.append(None)
                    continue
            if shared:
                refs.append(shard.push_shared.remote(*request))
            else:
                start, stop = self.ranges[s]
                refs.append(
                    shard.push.remote(to_wire(grad[start:stop], transfer_dtype), *request[1:])
                )
        for s, bell in rung:
            try:
                answers.append(bell.answer())
            except (OSError, ValueError):
                self._hang_up(s)
                answers.append(None)
        return refs, answers

    def wait(
        self, pending: list[ray.ObjectRef], num_returns: int, timeout: float
    ) -> tuple[list[ray.ObjectRef], list[ray.ObjectRef]]:
        return ray.wait(pending, num_returns=num_returns, timeout=timeout)

    def answer(self, handle: ray.ObjectRef) -> dict[str, Any] | None:
        try:
            return ray.get(handle)
        except RayError:
            return None

    def gradient_slots(self, owner: str, numel: int, count: int) -> list[shm.SharedVector]:
        return self.local.gradient_slots(owner, numel, count)

    def _check(self) -> None:
        """Re-attach if asked to, or if a shard's file is gone (it was restarted)."""
        if not self.stale and self.local.gone():
            self.stale = True
        if self.stale:
            self.attach()

    def issue(self, after: list[ray.ObjectRef] | None = None) -> PullTicket:
        with contextlib.suppress(RayError):
            self._check()  # if a shard is down, pull through the object store and retry there
        pulls = [
            None if v is not None else s.pull.remote()
            for s, v in zip(self.shards, self.shared, strict=True)
        ]
        return PullTicket(pulls, list(after or []))

    def arrived(self, ticket: PullTicket) -> bool:
        refs = [r for r in ticket.pulls if r is not None] + ticket.after
        return len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

    def finish(self, ticket: PullTicket, load: Load, attempts: int = 60) -> None:
        """Complete a pull: `load(start, stop, values)` for every shard, retrying while a shard
        restarts (each failure counted as `pull_failed`)."""
        if ticket.after:
            ray.wait(ticket.after, num_returns=len(ticket.after), timeout=RPC_TIMEOUT_S)
        for attempt in range(attempts):
            try:
                self._check()
                pairs = list(zip(ticket.pulls, self.shared, strict=True))
                if any(p is None and v is None for p, v in pairs):
                    ticket = self.issue()  # a shard left shared memory since this was issued
                    pairs = list(zip(ticket.pulls, self.shared, strict=True))
                refs = [p for p, v in pairs if p is not None and v is None]
                metas = ray.get(refs, timeout=RPC_TIMEOUT_S)
                arrays = ray.get([m[2][0] for m in metas], timeout=RPC_TIMEOUT_S)
                break
            except (RayActorError, GetTimeoutError, RayError):
                self.count("pull_failed")
                if attempt == attempts - 1:
                    raise
                self.stale = True
                time.sleep(min(2.0, 0.2 * (attempt + 1)))
                ticket = self.issue()
        fetched = iter(zip(metas, arrays, strict=True))
        for s, shared in enumerate(self.shared):
            start, stop = self.ranges[s]
            if shared is not None:
                with shared.reading():
                    self.versions[s] = shared.version
                    load(start, stop, shared.values)
                self.count("pulls_shared")
                continue
            (version, incarnation, _), values = next(fetched)
            load(start, stop, from_wire(values, widen=False))
            self.versions[s] = version
            self.incarnations[s] = incarnation
        self.count("pulls")
