"""A replica's loop, with DistBelief's overlap of fetching, computing and pushing.

The middle layer of `ps/`: plain Python over a `ShardChannel`, so the loop is driven in tests by
an in-memory channel, and by the Ray shell (`actors.ReplicaActor`) over the real transport.

Three things run at once: the main thread computes; a data thread decodes the next batch
(`BatchPrefetcher`); a communication thread serialises and sends each gradient to the shards
and then asks them for the weights that gradient produced. The main thread loads those
weights at the next step boundary if they have arrived; it may compute `ps.max_lag` steps on
the weights it already has rather than wait (by default one step with several replicas under
the `none` and `scale` policies; none alone, where a lagged step only makes every gradient
one version stale, and none under `bound:k`, so bounds stay exact).
Each gradient is a copy tagged with the versions of the weights it was computed on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distinception.config import JobConfig
from distinception.ps.replica import BatchPrefetcher, ReplicaCore, straggle
from distinception.ps.transport import RPC_TIMEOUT_S, GradientSlot, ShardChannel

if TYPE_CHECKING:
    from distinception.data.loader import TrainStream

#: Gradient slots in shared memory per replica: pushes in flight are bounded (see `_send`), so
#: three rarely wait.
SLOTS = 3


def train_stream(
    cfg: JobConfig, data_path: str, index: int, num_consumers: int
) -> Callable[[dict | None], TrainStream]:
    """Opens replica `index`'s share of the training data at a recorded position (or the start).

    The data path (torchvision) is imported here, when a replica is built, and not with this
    module: a shard's process imports the module and never reads an image."""
    from distinception.data.loader import TrainStream

    def open_at(position: dict | None) -> TrainStream:
        return TrainStream.for_job(cfg, data_path, index, num_consumers, position)

    return open_at


class ReplicaLoop:
    """`train(steps)` and `seek(position)`, the replica's whole job, over a channel to the shards.

    `open_stream(position)` opens the replica's data at a position (None: where it starts);
    `connect(count)` makes the channel, which counts its own events with `count`.
    `restarted`: this is a new life of a replica that failed (reported to the coordinator, which
    then seeks it to where its predecessor stopped)."""

    def __init__(
        self,
        index: int,
        cfg: JobConfig,
        num_classes: int,
        open_stream: Callable[[dict | None], Any],
        connect: Callable[[Callable[[str], None]], ShardChannel],
        position: dict | None = None,
        restarted: bool = False,
        slowdown: float = 1.0,
    ) -> None:
        self.index = index
        self.cfg = cfg
        self.restarted = restarted
        device = "cuda" if cfg.placement.replica_gpus > 0 and torch.cuda.is_available() else "cpu"
        self._open_stream = open_stream
        self.data = BatchPrefetcher(open_stream(position), pin=device == "cuda")
        # Where this replica's data stream really starts when it was started or sought at a
        # recorded position after a failure (None for a replica that started with the run):
        # reported, so a recovery can be checked from outside.
        self.resumed_from = dict(self.data.position) if position is not None else None
        self.core = ReplicaCore.for_job(cfg, num_classes, self.data, device=device)
        self.fingerprint = self.core.layout.fingerprint
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()
        self.links = connect(self._count)
        self.num_shards = len(self.links.versions)
        # Gradient slots in shared memory, for shards on this node (made at the first push).
        self.slots: list[GradientSlot] = []
        self.slot_sent: list[Future | None] = []
        self.slot_pushes: list[list[Any]] = []
        self.current = -1  # the slot backward accumulates into (CPU), or -1
        self.pushes = 0
        self.step = 0
        self.max_lag = cfg.ps.lag
        self.lag = 0
        #: A benchmark's straggler: each step takes this many times its compute time.
        self.straggler = slowdown
        self.pending_pulls: deque[Future] = deque()
        self.comm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-comm")
        self.in_flight: list[Any] = []

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    # -- communication -------------------------------------------------------------------
    def _finish_pull(self, ticket: Any) -> None:
        self.links.finish(ticket or self.links.issue(), self.core.load_slice)

    def _ticket(self, future: Future, timeout: float) -> Any:
        """The pull queued behind one of our pushes (None if sending it failed)."""
        try:
            return future.result(timeout=timeout)
        except self.links.errors:
            self._count("push_lost")
            return None

    def _arrived(self, future: Future) -> bool:
        """Whether the pull behind this push can be taken now. A push whose send failed counts
        as arrived: taking it counts it lost once and pulls afresh, where asking here would
        count it again at every refresh until it is taken."""
        if not future.done():
            return False
        if future.exception() is not None:
            return True
        return self.links.arrived(future.result())

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
            ready, self.in_flight = self.links.wait(self.in_flight, need, RPC_TIMEOUT_S)
        else:
            ready, self.in_flight = self.links.wait(self.in_flight, len(self.in_flight), 0)
        for handle in ready:
            self._tally(self.links.answer(handle))

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
        """Make the gradient slots once a shard that can read them is known."""
        if self.slots:
            return True
        self.slots = list(
            self.links.gradient_slots(f"replica-{self.index}", self.core.layout.total, SLOTS)
        )
        if not self.slots:
            return False
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
            pending = self.slot_pushes[k]
            if pending:
                self.links.wait(pending, len(pending), RPC_TIMEOUT_S)

    def _send(
        self,
        grad: torch.Tensor,
        slot: int,
        landed: Callable[[], None],
        versions: list[int],
        incarnations: list[str],
        examples: int,
        pull: bool,
    ) -> Any:
        """On the communication thread: push every shard its slice, then (if asked) pull.

        `landed` waits for the gradient's copy off the GPU, here rather than on the compute
        thread, which meanwhile queues the next step. A shard on this node reads its slice from
        the gradient's shared-memory slot; any other gets it through the object store."""
        landed()
        target = self.slots[slot] if slot >= 0 else None
        if target is not None and grad.data_ptr() != target.values.data_ptr():
            target.values.copy_(grad)  # a GPU's gradient, landed in page-locked memory
        pending, answers = self.links.push(
            grad,
            target.path if target is not None else "",
            versions,
            incarnations,
            examples,
            self.fingerprint,
            self.cfg.transport.transfer_dtype,
        )
        for answer in answers:
            self._tally(answer)
        self._count("pushes_shared", len(answers))
        self.in_flight.extend(pending)
        if slot >= 0:
            self.slot_pushes[slot] = pending
        self._count("pushes")
        # Issued after our push, so each shard applies our gradient before answering; a shard
        # read from shared memory is read once our push to it has been answered.
        ticket = self.links.issue(after=pending) if pull else None
        # Bounded in-flight pushes: a fast replica cannot flood a slow shard's queue.
        self._collect(keep=2 * self.num_shards)
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

    def seek(self, position: dict) -> dict:
        """Continue from a recorded data position (after a restart of this replica); returns
        the position the stream now starts at."""
        self.data.close()
        self.data = BatchPrefetcher(
            self._open_stream(position), pin=self.core.device.type == "cuda"
        )
        self.core.batches = self.data
        self.restarted = False
        self.resumed_from = dict(self.data.position)
        return self.resumed_from
