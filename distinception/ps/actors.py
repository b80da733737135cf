"""The Ray shell around the plain shard, replica and averager cores.

This is the only module that turns classes into actors. The data plane is replica <-> shard and
averager <-> shard, directly: the driver never handles weights or gradients while training.

Wire protocol of a shard:
- `attach()` -> its node, incarnation, and (when it has one) its shared-memory file and doorbell.
- `pull()` -> (version, incarnation, [ref]): the weights of `version` as one object-store ref,
  put at most once per version and cached, so any number of pulls of one version cost one copy.
  The ref is wrapped in a list so the caller decides when to fetch it.
- `push(grad, base_version, examples, fingerprint, incarnation)` -> a `PushResult` as a dict.
- Same node (`ps.transport=auto`): a replica reads the weights from the shard's shared-memory
  file instead of pulling, and pushes by writing its gradient into a shared-memory slot and
  ringing the shard's doorbell with `push`'s arguments, the slot's path in place of the gradient
  (`push_shared` takes the same request as a Ray call). See `shm`.
The incarnation changes whenever a shard actor is restarted (and reloads its checkpoint), so a
gradient computed on weights of a previous incarnation is refused rather than misapplied.

Constructor arguments stay small and by value, so a restart never depends on an object that may
have left the store: the coordinator registers its shards under job-unique names and hands
replicas and the averager those names (`shard_handles`), and each shard builds its initial
slice from `run.model_seed` itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from distinception.config import JobConfig
from distinception.data.loader import bn_batches, val_batches
from distinception.ps import checkpoint as ckpt
from distinception.ps import shm
from distinception.ps.averager import AveragerCore
from distinception.ps.layout import ParamLayout
from distinception.ps.replica import (
    BatchPrefetcher,
    ReplicaCore,
    build_flat_model,
    from_wire,
    straggle,
    to_wire,
)
from distinception.ps.shard import ShardCore

#: A pull or push that takes longer than this is treated as a failure of that shard.
RPC_TIMEOUT_S = 120.0


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))


def _reconstructed() -> bool:
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class ShardActor:
    """A shard as an actor. Same-node replicas read its weights from shared memory and ring its
    doorbell to push (see `shm`); others call `pull` and `push`. Both paths, and every other
    method, go through one lock around the core, as the doorbell answers on its own threads."""

    def __init__(
        self,
        index: int,
        start: int,
        stop: int,
        layout: ParamLayout,
        init: list[ray.ObjectRef] | None,
        cfg: JobConfig,
        examples_per_epoch: int,
        checkpoint_uri: str,
        resume: bool,
        shm_dir: str = "",
        num_classes: int = 0,
    ) -> None:
        """`init`: the initial slice, in the object store; None builds the model from
        `run.model_seed` here instead (the coordinator's way: weights are identical everywhere,
        and a restart never depends on an object that may have gone out of scope)."""
        torch.set_num_threads(1)
        if init is None:
            _, flat, _, _ = build_flat_model(cfg, num_classes, seed=cfg.run.model_seed)
            values = flat[start:stop].clone()
        else:
            values = ray.get(init[0])
        incarnation = uuid.uuid4().hex[:12]
        self.mutex = threading.Lock()
        self.shm_dir = shm_dir
        self.node_id = ray.get_runtime_context().get_node_id()
        self.total = layout.total
        shared = self._share(index, stop - start, incarnation)
        self.core = ShardCore(
            index, start, stop, layout, values, cfg.ps, examples_per_epoch, shared=shared
        )
        self.core.incarnation = incarnation
        self.dtype = cfg.ps.transfer_dtype
        self.checkpoint_uri = checkpoint_uri
        self.restored_from = -1
        self.restarts = 1 if _reconstructed() else 0
        if (resume or self.restarts) and checkpoint_uri and ckpt.exists(checkpoint_uri):
            self.core.load_state_dict(ckpt.load_state(checkpoint_uri))
            self.restored_from = self.core.version
        self._published: tuple[int, ray.ObjectRef] | None = None
        self._grads: dict[str, shm.SharedVector] = {}
        self.doorbell: shm.DoorbellServer | None = None
        if shared is not None:
            bell = os.path.join(self.shm_dir, f"shard-{index}-{incarnation}.sock")
            with contextlib.suppress(OSError):  # without one, replicas push by Ray calls
                self.doorbell = shm.DoorbellServer(bell, self._ring)

    def _share(self, index: int, size: int, incarnation: str) -> shm.SharedVector | None:
        """The weights in shared memory for same-node readers, or None (object store only)."""
        if not self.shm_dir or not shm.available():
            return None
        path = os.path.join(self.shm_dir, f"shard-{index}-{incarnation}.w")
        try:
            self._claim = shm.claim(self.shm_dir)  # held while this process lives
            shm.sweep(keep=self.shm_dir)  # directories of jobs whose processes are all gone
            shm.remove_matching(self.shm_dir, f"shard-{index}-")  # a killed predecessor's files
            return shm.SharedVector(path, size, create=True)
        except OSError:
            return None  # no usable shared memory here: replicas pull through the object store

    def ready(self) -> dict[str, Any]:
        return {
            "index": self.core.index,
            "version": self.core.version,
            "incarnation": self.core.incarnation,
            "restored_from": self.restored_from,
            "restarts": self.restarts,
        }

    def attach(self) -> dict[str, Any]:
        """How to reach this shard: its node, incarnation and, if any, shared-memory file and
        doorbell."""
        shared = self.core.shared
        return {
            "node_id": self.node_id,
            "incarnation": self.core.incarnation,
            "path": shared.path if shared is not None else "",
            "bell": self.doorbell.path if self.doorbell is not None else "",
            "size": self.core.size,
            "total": self.total,
        }

    def pull(self) -> tuple[int, str, list[ray.ObjectRef]]:
        with self.mutex:
            version = self.core.version
            if self._published is None or self._published[0] != version:
                # Dropping the previous ref lets the object store free that version once no
                # replica still holds it, which keeps object-store memory flat over a long run.
                self._published = (version, ray.put(to_wire(self.core.flat, self.dtype)))
            return version, self.core.incarnation, [self._published[1]]

    def push(
        self,
        grad: np.ndarray,
        base_version: int,
        examples: int,
        fingerprint: str,
        incarnation: str,
    ) -> dict[str, Any]:
        with self.mutex:
            result = self.core.apply(
                from_wire(grad, widen=False),
                base_version,
                examples=examples,
                fingerprint=fingerprint,
                incarnation=incarnation,
            )
        return dataclasses.asdict(result)

    def push_shared(
        self,
        path: str,
        base_version: int,
        examples: int,
        fingerprint: str,
        incarnation: str,
    ) -> dict[str, Any]:
        """`push` for a same-node replica: the whole flat gradient lies in the shared-memory
        file `path` (one of the replica's slots in this job's directory); this shard reads its
        slice from there. A path outside the directory or a file that cannot be mapped is
        refused as "source"; a file of the wrong size as "length"."""
        with self.mutex:
            grad = self._gradient_source(path)
            if grad is None:
                result = self.core.refuse("source", base_version)
            else:
                result = self.core.apply(
                    grad[self.core.start : self.core.stop],
                    base_version,
                    examples=examples,
                    fingerprint=fingerprint,
                    incarnation=incarnation,
                    borrow=True,
                )
        return dataclasses.asdict(result)

    def _ring(self, request: dict[str, Any]) -> dict[str, Any]:
        """A doorbell request: `push_shared`'s arguments by name. A malformed one (not from a
        replica of ours) is refused as "source"."""
        try:
            path, fingerprint, incarnation = (
                str(request["path"]),
                str(request["fingerprint"]),
                str(request["incarnation"]),
            )
            base_version, examples = int(request["version"]), int(request["examples"])
        except (KeyError, TypeError, ValueError):
            with self.mutex:
                return dataclasses.asdict(self.core.refuse("source", self.core.version))
        return self.push_shared(path, base_version, examples, fingerprint, incarnation)

    def _gradient_source(self, path: str) -> torch.Tensor | None:
        mapped = self._grads.get(path)
        if mapped is not None:
            return mapped.values
        real = os.path.realpath(path)
        if (
            not self.shm_dir
            or os.path.dirname(real) != os.path.realpath(self.shm_dir)
            or not os.path.basename(real).startswith("replica-")
        ):
            return None
        # Forget the slots of replicas that have gone (their files removed) before mapping more.
        for gone in [p for p in self._grads if not os.path.exists(p)]:
            self._grads.pop(gone).close()
        try:
            size = os.path.getsize(real)
            numel = max(0, (size - shm.HEADER) // 4)
            mapped = shm.SharedVector(real, numel)
        except (OSError, ValueError):
            return None
        self._grads[path] = mapped
        return mapped.values

    def release(self) -> bool:
        """At the end of the job: unmap everything and remove this job's shared-memory files."""
        if self.doorbell is not None:
            self.doorbell.close()
        with self.mutex:
            for mapped in self._grads.values():
                mapped.close()
            self._grads.clear()
        shm.remove(self.shm_dir)
        return True

    def stats(self) -> dict[str, Any]:
        with self.mutex:
            return self.core.stats() | {"restarts": self.restarts}

    def save(self) -> int:
        """Checkpoint weights, optimizer and scheduler state, version; returns the version."""
        if not self.checkpoint_uri:
            return self.core.version
        with self.mutex:
            state = self.core.state_dict()
        ckpt.save_state(self.checkpoint_uri, state)
        return int(state["version"])


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
        self.use_shm = transport != "object_store" and shm.available()
        self.shared: list[shm.SharedVector | None] = [None] * len(shards)
        # Doorbell paths as attached, and the connections (made and used by the pushing thread).
        self.bell_paths = [""] * len(shards)
        self.bells: list[shm.Doorbell | None] = [None] * len(shards)
        self.versions = [0] * len(shards)
        self.incarnations = [""] * len(shards)
        self.shm_dir = ""
        self.stale = True

    def attach(self) -> None:
        infos = ray.get([s.attach.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        for s, info in enumerate(infos):
            self.incarnations[s] = info["incarnation"]
            self.bell_paths[s] = info["bell"] if info["node_id"] == self.node_id else ""
            old = self.shared[s]
            if old is not None and old.path == info["path"]:
                continue
            if old is not None:
                old.close()
            self.shared[s] = None
            if self.use_shm and info["path"] and info["node_id"] == self.node_id:
                try:
                    self.shared[s] = shm.SharedVector(info["path"], info["size"])
                    self.shm_dir = os.path.dirname(info["path"])
                except (OSError, ValueError):
                    self.count("shm_unavailable")
        self.stale = False

    def _bell(self, s: int) -> shm.Doorbell | None:
        """The doorbell of shard `s`, connected on first use (None: push by a Ray call)."""
        bell, path = self.bells[s], self.bell_paths[s]
        if bell is not None and bell.path != path:
            bell.close()
            bell = self.bells[s] = None
        if bell is None and path and self.use_shm:
            try:
                bell = self.bells[s] = shm.Doorbell(path, RPC_TIMEOUT_S)
            except OSError:
                self.count("doorbell_failed")
        return bell

    def _hang_up(self, s: int) -> None:
        bell = self.bells[s]
        if bell is not None:
            bell.close()
        self.bells[s] = None
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
            args = (versions[s], examples, fingerprint, incarnations[s])
            shared = bool(slot) and self.shared[s] is not None
            bell = self._bell(s) if shared else None
            if bell is not None:
                try:
                    bell.ring(
                        dict(
                            zip(
                                ("path", "version", "examples", "fingerprint", "incarnation"),
                                (slot, *args),
                                strict=True,
                            )
                        )
                    )
                    rung.append((s, bell))
                    continue
                except OSError:
                    self._hang_up(s)
                    answers.append(None)
                    continue
            if shared:
                refs.append(shard.push_shared.remote(slot, *args))
            else:
                start, stop = self.ranges[s]
                refs.append(shard.push.remote(to_wire(grad[start:stop], transfer_dtype), *args))
        for s, bell in rung:
            try:
                answers.append(bell.answer())
            except (OSError, ValueError):
                self._hang_up(s)
                answers.append(None)
        return refs, answers

    def _check(self) -> None:
        """Re-attach if asked to, or if a shard's file is gone (it was restarted)."""
        if not self.stale and any(
            v is not None and not os.path.exists(v.path) for v in self.shared
        ):
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

    def finish(
        self,
        ticket: PullTicket,
        load: Callable[[int, int, torch.Tensor], None],
        attempts: int = 60,
    ) -> None:
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


class ReplicaActor:
    """A replica's loop, with DistBelief's overlap of fetching, computing and pushing.

    Three things run at once: the main thread computes; a data thread decodes the next batch
    (`BatchPrefetcher`); a communication thread serialises and sends each gradient to the shards
    and then asks them for the weights that gradient produced. The main thread loads those
    weights at the next step boundary if they have arrived; it may compute `ps.max_lag` steps on
    the weights it already has rather than wait (by default one step with several replicas under
    the `none` and `scale` policies; none alone, where a lagged step only makes every gradient
    one version stale, and none under `bound:k`, so bounds stay exact).
    Each gradient is a copy tagged with the versions of the weights it was computed on.
    """

    def __init__(
        self,
        index: int,
        cfg: JobConfig,
        data_path: str,
        num_classes: int,
        shards: list[Any],
        ranges: list[tuple[int, int]],
        num_consumers: int,
        position: dict | None = None,
    ) -> None:
        _threads(cfg.ps.replica_cpus)
        self.index = index
        self.cfg = cfg
        self.shards = shards = shard_handles(shards)
        self.ranges = ranges
        self.restarted = _reconstructed()
        device = "cuda" if cfg.ps.replica_gpus > 0 and torch.cuda.is_available() else "cpu"
        self._stream_args = (data_path, num_consumers)
        self.data = BatchPrefetcher(self._open_stream(position), pin=device == "cuda")
        # Where this actor's data stream really starts when it was started or sought at a
        # recorded position after a failure (None for a replica that started with the run):
        # reported, so a recovery can be checked from outside.
        self.resumed_from = dict(self.data.position) if position is not None else None
        self.core = ReplicaCore(cfg, num_classes, self.data, device=device)
        self.fingerprint = self.core.layout.fingerprint
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.links = ShardLinks(shards, ranges, cfg.ps.transport, self._count)
        # Gradient slots in shared memory, for shards on this node (made at the first push).
        self.slots: list[shm.SharedVector] = []
        self.slot_sent: list[Future | None] = []
        self.slot_pushes: list[list[ray.ObjectRef]] = []
        self.current = -1  # the slot backward accumulates into (CPU), or -1
        self.pushes = 0
        self.step = 0
        self.max_lag = cfg.ps.lag
        self.lag = 0
        self.straggler = cfg.ps.straggler_factor if index == 0 else 1.0
        self.pending_pulls: deque[Future] = deque()
        self.comm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-comm")
        self.in_flight: list[ray.ObjectRef] = []

    def ready(self) -> dict[str, Any]:
        """Answers once the actor is placed and built; says on which node."""
        return {"index": self.index, "node_id": ray.get_runtime_context().get_node_id()}

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    # -- communication -------------------------------------------------------------------
    def _finish_pull(self, ticket: PullTicket | None) -> None:
        self.links.finish(ticket or self.links.issue(), self.core.load_slice)

    def _ticket(self, future: Future, timeout: float) -> PullTicket | None:
        """The pull queued behind one of our pushes (None if sending it failed)."""
        try:
            return future.result(timeout=timeout)
        except RayError:
            self._count("push_lost")
            return None

    def _arrived(self, future: Future) -> bool:
        if not future.done():
            return False
        ticket = self._ticket(future, 0)
        return ticket is not None and self.links.arrived(ticket)

    def _refresh(self) -> None:
        """Load the newest weights that have arrived; wait for the oldest pull in flight only
        when no more steps on the current weights are allowed."""
        pending = self.pending_pulls
        if not pending:
            self._finish_pull(None)
            self.lag = 0
            return
        for i in range(len(pending) - 1, -1, -1):
            if self._arrived(pending[i]):
                ticket = self._ticket(pending[i], 0)
                for _ in range(i + 1):
                    pending.popleft()
                self._finish_pull(ticket)
                self.lag = 0
                return
        if self.lag < self.max_lag:
            self.lag += 1
            return
        self._finish_pull(self._ticket(pending.popleft(), RPC_TIMEOUT_S))
        self.lag = 0

    def _collect(self, keep: int) -> None:
        """Collect finished pushes, waiting only while more than `keep` are in flight."""
        if not self.in_flight:
            return
        need = len(self.in_flight) - keep
        if need > 0:
            ready, self.in_flight = ray.wait(
                self.in_flight, num_returns=need, timeout=RPC_TIMEOUT_S
            )
        else:
            ready, self.in_flight = ray.wait(
                self.in_flight, num_returns=len(self.in_flight), timeout=0
            )
        for ref in ready:
            try:
                result = ray.get(ref)
            except RayError:
                result = None
            self._tally(result)

    def _tally(self, result: dict[str, Any] | None) -> None:
        """Count one shard's answer to a push (None: the push was lost)."""
        if result is None:
            self._count("push_lost")
            self.links.stale = True  # the shard may come back with a new file
        elif result["accepted"]:
            self._count("accepted")
            self._count("staleness_sum", result["staleness"])
        else:
            self._count(f"refused_{result['reason']}")
            if result["reason"] in ("restarted", "source"):
                self.links.stale = True

    def _slots_ready(self) -> bool:
        """Make the gradient slots in shared memory once a shard on this node is known."""
        if self.slots or not self.links.shm_dir:
            return bool(self.slots)
        self._claim = shm.claim(self.links.shm_dir)  # held while this process lives
        shm.remove_matching(self.links.shm_dir, f"replica-{self.index}-")  # a predecessor's
        name = f"replica-{self.index}-{uuid.uuid4().hex[:12]}"
        for k in range(3):  # pushes in flight are bounded (see _send), so 3 rarely wait
            path = os.path.join(self.links.shm_dir, f"{name}-{k}.g")
            self.slots.append(shm.SharedVector(path, self.core.layout.total, create=True))
        self.slot_sent = [None] * len(self.slots)
        self.slot_pushes = [[] for _ in self.slots]
        if self.core.device.type == "cpu":
            self.core.move_gradient(self.slots[0].values)  # backward accumulates in slot 0
            self.current = 0
        return True

    def _free(self, k: int) -> None:
        """Wait until every shard has answered the push that last used slot `k`."""
        sent = self.slot_sent[k]
        if sent is not None:
            with contextlib.suppress(Exception):  # a failed send is counted where it failed
                sent.result(timeout=RPC_TIMEOUT_S)
            refs = self.slot_pushes[k]
            if refs:
                ray.wait(refs, num_returns=len(refs), timeout=RPC_TIMEOUT_S)

    def _send(
        self,
        grad: torch.Tensor,
        slot: int,
        landed: Callable[[], None],
        versions: list[int],
        incarnations: list[str],
        examples: int,
        pull: bool,
    ) -> PullTicket | None:
        """On the communication thread: push every shard its slice, then (if asked) pull.

        `landed` waits for the gradient's copy off the GPU, here rather than on the compute
        thread, which meanwhile queues the next step. A shard on this node reads its slice from
        the gradient's shared-memory slot; any other gets it through the object store."""
        landed()
        target = self.slots[slot] if slot >= 0 else None
        if target is not None and grad.data_ptr() != target.values.data_ptr():
            target.values.copy_(grad)  # a GPU's gradient, landed in page-locked memory
        refs, answers = self.links.push(
            grad,
            target.path if target is not None else "",
            versions,
            incarnations,
            examples,
            self.fingerprint,
            self.cfg.ps.transfer_dtype,
        )
        for answer in answers:
            self._tally(answer)
        self._count("pushes_shared", len(answers))
        self.in_flight.extend(refs)
        if slot >= 0:
            self.slot_pushes[slot] = refs
        self._count("pushes")
        # Issued after our push, so each shard applies our gradient before answering; a shard
        # read from shared memory is read once our push to it has been answered.
        ticket = self.links.issue(after=refs) if pull else None
        # Bounded in-flight pushes: a fast replica cannot flood a slow shard's queue.
        self._collect(keep=2 * len(self.shards))
        return ticket

    def _push(self, pull: bool) -> None:
        """Hand the gradient to the communication thread; the next step may start at once.

        With shared-memory slots on a CPU, backward accumulates straight into a slot, which is
        handed out as it is while accumulation moves on to the next free one; on a GPU the
        gradient lands in page-locked memory and is copied into a free slot when sent."""
        slot = -1
        if not self._slots_ready():
            grad, examples, landed = self.core.take_gradient()
        elif self.current >= 0:
            slot, nxt = self.current, (self.current + 1) % len(self.slots)
            self._free(nxt)
            grad, examples, landed = self.core.take_gradient(swap=self.slots[nxt].values)
            self.current = nxt
        else:
            slot = self.pushes % len(self.slots)
            self._free(slot)
            grad, examples, landed = self.core.take_gradient()
        future = self.comm.submit(
            self._send,
            grad,
            slot,
            landed,
            list(self.links.versions),
            list(self.links.incarnations),
            examples,
            pull,
        )
        if slot >= 0:
            self.slot_sent[slot] = future
        self.pushes += 1
        if pull:
            self.pending_pulls.append(future)
            if len(self.pending_pulls) > 2:
                self.pending_pulls.popleft()  # superseded by the two newer ones

    # -- the loop --------------------------------------------------------------------------
    def train(self, steps: int) -> dict[str, Any]:
        """Run `steps` batches; return what happened, for the coordinator's bookkeeping."""
        cfg = self.cfg.ps
        t0 = time.perf_counter()
        timings: Counter[str] = Counter()
        losses: list[torch.Tensor] = []
        examples = 0
        for _ in range(steps):
            if self.step % cfg.n_fetch == 0 or self.pending_pulls:
                t = time.perf_counter()
                self._refresh()
                timings["pull_wait_s"] += time.perf_counter() - t
            t = time.perf_counter()
            batch = self.core.next_batch()
            timings["data_s"] += time.perf_counter() - t
            t = time.perf_counter()
            losses.append(self.core.compute(batch, self.data.rng, self.data.request))
            compute_s = time.perf_counter() - t
            timings["compute_s"] += compute_s
            straggle(self.straggler, compute_s)
            examples += int(batch[1].shape[0])
            self.step += 1
            if self.step % cfg.n_push == 0:
                t = time.perf_counter()
                self._push(pull=self.step % cfg.n_fetch == 0)
                timings["push_s"] += time.perf_counter() - t
        # Read once per call, not per step: a GPU keeps its queue of kernels meanwhile.
        values = torch.stack(losses).float().cpu().numpy() if losses else np.zeros(0)
        finite = values[np.isfinite(values)]
        with self.lock:
            counters = dict(self.counters)
        return {
            "index": self.index,
            "steps": steps,
            "examples": examples,
            "loss": float(finite.mean()) if finite.size else float("nan"),
            "wall_s": time.perf_counter() - t0,
            "timings": dict(timings),
            "counters": counters,
            "skipped": self.data.skipped,
            "position": self.data.position,
            "restarted": self.restarted,
            "resumed_from": self.resumed_from,
        }

    def _open_stream(self, position: dict | None) -> Any:
        from distinception.data.loader import TrainStream

        path, n = self._stream_args
        return TrainStream(
            path,
            consumer=self.index,
            num_consumers=n,
            batch_size=self.cfg.data.batch_size,
            recipe=self.cfg.recipe,
            input_size=self.cfg.model.input_size,
            seed=self.cfg.run.seed,
            position=position,
        )

    def seek(self, position: dict) -> dict:
        """Continue from a recorded data position (after a restart of this actor); returns the
        position the stream now starts at."""
        self.data.close()
        self.data = BatchPrefetcher(
            self._open_stream(position), pin=self.core.device.type == "cuda"
        )
        self.core.batches = self.data
        self.restarted = False
        self.resumed_from = dict(self.data.position)
        return self.resumed_from


class AveragerActor:
    def __init__(
        self,
        cfg: JobConfig,
        data_path: str,
        num_classes: int,
        shards: list[Any],
        ranges: list[tuple[int, int]],
        checkpoint_uri: str,
        resume: bool,
    ) -> None:
        _threads(cfg.ps.averager_cpus)
        self.cfg = cfg
        self.data_path = data_path
        self.shards = shards = shard_handles(shards)
        self.ranges = ranges
        self.core = AveragerCore(cfg, num_classes)
        self.total = self.core.layout.total
        self.counters: Counter[str] = Counter()
        self.links = ShardLinks(shards, ranges, cfg.ps.transport, self._count)
        self.checkpoint_uri = checkpoint_uri
        self.restarts = 1 if _reconstructed() else 0
        if (resume or self.restarts) and checkpoint_uri and ckpt.exists(checkpoint_uri):
            self.core.load_state_dict(ckpt.load_state(checkpoint_uri))
        self.lock = threading.Lock()
        self.running = False
        self.thread: threading.Thread | None = None
        self.errors = 0
        if self.restarts:
            self.start()  # a restarted averager resumes sampling on its own

    def _count(self, key: str) -> None:
        self.counters[key] += 1

    def _sample(self) -> bool:
        values = torch.empty(self.total)
        self.links.finish(self.links.issue(), lambda a, b, v: values[a:b].copy_(v), attempts=1)
        version = sum(self.links.versions) // len(self.links.versions)
        with self.lock:
            return self.core.observe(version, values)

    def _loop(self) -> None:
        while self.running:
            try:
                self._sample()
            except RayError:
                self.errors += 1
            time.sleep(self.cfg.ps.averager_interval_s)

    def start(self) -> bool:
        if not self.running:
            self.running = True
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return True

    def stop(self) -> dict[str, Any]:
        """Stop sampling, then take one last sample so the average includes the final weights."""
        self.running = False
        if self.thread is not None:
            self.thread.join(timeout=RPC_TIMEOUT_S)
        try:
            self._sample()
        except RayError:
            self.errors += 1
        return {"version": self.core.version, "samples": self.core.samples}

    def _val(self):
        return val_batches(self.cfg, self.data_path)

    def _bn(self):
        return bn_batches(self.cfg, self.data_path)

    def evaluate(self) -> dict[str, Any]:
        with self.lock:
            return self.core.evaluate(self._val, self._bn) | {"sampler_errors": self.errors}

    def inference_state(self) -> dict[str, torch.Tensor]:
        with self.lock:
            model = self.core.inference_model(self._bn)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save(self) -> int:
        with self.lock:
            if self.checkpoint_uri:
                ckpt.save_state(self.checkpoint_uri, self.core.state_dict())
            return self.core.version


def remote_shard(cfg: JobConfig, name: str | None = None) -> Any:
    """`name`: register the shard under it, so replicas and the averager can be given names."""
    return ray.remote(ShardActor).options(
        name=name,
        num_cpus=cfg.ps.shard_cpus,
        max_restarts=cfg.ps.max_shard_restarts,
        max_task_retries=0,
        resources=cfg.ps.shard_resources,
    )


def remote_replica(cfg: JobConfig, resources: dict[str, float] | None = None) -> Any:
    return ray.remote(ReplicaActor).options(
        num_cpus=cfg.ps.replica_cpus,
        num_gpus=cfg.ps.replica_gpus,
        max_restarts=cfg.ps.max_replica_restarts,
        max_task_retries=0,
        resources=cfg.ps.replica_resources if resources is None else resources,
    )


def remote_averager(cfg: JobConfig) -> Any:
    return ray.remote(AveragerActor).options(
        num_cpus=cfg.ps.averager_cpus,
        max_restarts=2,
        max_task_retries=0,
        max_concurrency=4,
        resources=cfg.ps.shard_resources,
    )
