"""The replica scheduler: keeps every replica busy, and every replica's work accounted for.

Each replica always has a second call queued behind the one it runs, so it never waits for the
driver; each call is sized to about `CALL_SECONDS` of work, so the driver reacts to faults and
budgets quickly. A replica that dies is sought back to the data position it last reported once
Ray has restarted it, or replaced there when Ray has no restarts left; in an elastic job its
slot is freed instead and the pool fills it when capacity returns. Waiting for a restart never
holds the driver: the other replicas' calls are collected and queued meanwhile. Positions and
stats are kept per slot because that is what a restart, a replacement and a checkpoint need.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError

from distinception.config import ConfigError, JobConfig
from distinception.ps.actors import RPC_TIMEOUT_S
from distinception.ps.capacity import replica_bundle
from distinception.ps.elastic import ReplicaPool

log = logging.getLogger(__name__)

#: Each replica call runs about this long: short enough to react to faults and budgets quickly,
#: long enough that the driver's round trips cost nothing measurable.
CALL_SECONDS = 1.0
#: Calls queued per replica: the one it runs and the next, so it never waits for the driver.
QUEUED = 2
#: Steps in a new replica's first calls, before its pace is known.
FIRST_STEPS = 2
#: How long `start` waits for the first replicas to be built before it lets the clock run anyway.
STARTUP_WAIT_S = 300.0
#: Seconds between asks to a replica that Ray is restarting: its calls fail at once until its
#: new life is up, a few seconds later.
RETRY_S = 0.5

#: Creates the replica actor for a slot, starting at the given data position (None: its start).
Spawn = Callable[[int, dict | None], Any]


class ReplicaScheduler:
    """The replicas of one job, the calls in flight to them, and what they reported."""

    def __init__(self, cfg: JobConfig, faults: Counter[str], spawn: Spawn) -> None:
        self.cfg = cfg
        self.faults = faults
        self.spawn = spawn
        self.replicas: dict[int, Any] = {}
        self.pending: dict[ray.ObjectRef, int] = {}
        self.positions: dict[int, dict] = {}
        self.replica_stats: dict[int, dict[str, Any]] = {}
        #: Examples trained on by all replicas, this job and (resumed) before it.
        self.examples = 0
        self.pool: ReplicaPool | None = None
        #: Shard updates a fresh job waits for before the other replicas start (0: none).
        self.warm = 0
        self.n_active = 0
        self.stopping = False
        #: Slots whose current failure is counted: a replica's death can surface as failed calls,
        #: as a call of its restarted life, or both, and is counted once.
        self.down: set[int] = set()
        #: Seeks in flight, by call, and the slots being sought back: slot -> (the time to ask
        #: again if no seek is in flight, the time after which it is replaced instead).
        self.seeks: dict[ray.ObjectRef, int] = {}
        self.recovering: dict[int, tuple[float, float]] = {}

    # -- starting ------------------------------------------------------------------------------
    def start(self) -> None:
        """Create the first replicas: one while a fresh job warms up, else all of them. They
        get no call until `begin`, so they can be built while the shards are."""
        ps = self.cfg.ps
        self.warm = ps.warm_start_updates if self.examples == 0 else 0
        self.n_active = 1 if self.warm else ps.num_replicas
        if self.cfg.placement.elastic:
            self.replicas = self._first_elastic_replicas(self.n_active)
        else:
            self.replicas = {i: self._new(i) for i in range(self.n_active)}

    def begin(self) -> None:
        """Queue the first replicas' first calls."""
        for i in self.replicas:
            self._queue(i)

    def wait_built(self, timeout: float = STARTUP_WAIT_S) -> None:
        """Return once the started replicas are built (placed, data opened, model made).

        The job starts its training clock after this, so that the clock counts training and
        not start-up, as the clocks of the systems it is compared with do. It never raises: a
        replica that fails to build fails its first call, where a failed replica is handled.
        """
        built = [r.ready.remote() for r in self.replicas.values()]
        if built:
            ray.wait(built, num_returns=len(built), timeout=timeout)

    def end_warm_start(self, versions: list[int]) -> None:
        """Once every shard has `warm` updates, start the replicas the warm start held back
        (not once the job is stopping: they would only start to be stopped)."""
        ps = self.cfg.ps
        if self.stopping or not (
            self.warm and self.n_active < ps.num_replicas and min(versions) >= self.warm
        ):
            return
        if self.pool is not None:
            self.pool.set_target(ps.num_replicas)
            self.n_active = ps.num_replicas
        for i in range(self.n_active, ps.num_replicas):
            self.replicas[i] = self._new(i)
            self._queue(i)
        self.n_active = ps.num_replicas

    def _new(self, slot: int) -> Any:
        return self.spawn(slot, self.positions.get(slot))

    def _queue(self, i: int) -> None:
        """Fill slot `i`'s queue up to `QUEUED` calls."""
        queued = sum(1 for slot in self.pending.values() if slot == i)
        for _ in range(QUEUED - queued):
            self.pending[self.replicas[i].train.remote(FIRST_STEPS)] = i

    def _first_elastic_replicas(self, target: int) -> dict[int, Any]:
        """Ask for room for `target` replicas; wait (bounded) until `min_replicas` are up."""
        ps = self.cfg.ps
        self.pool = ReplicaPool(
            self._new,
            ps.num_replicas,
            replica_bundle(self.cfg),
            self._slot_progress,
        )
        self.pool.set_target(target)
        replicas: dict[int, Any] = {}
        at = self.cfg.placement
        need = min(at.min_replicas, target)
        deadline = time.monotonic() + at.elastic_wait_s
        while len(replicas) < need:
            replicas.update(self.pool.poll(replicas))
            if len(replicas) >= need:
                break
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"placement.min_replicas={at.min_replicas}: only {len(replicas)} replicas "
                    f"could be placed within placement.elastic_wait_s={at.elastic_wait_s:g}; "
                    "expected a cluster "
                    f"with room for replicas needing {self.pool.bundle}"
                )
            time.sleep(0.5)
        return replicas

    def _slot_progress(self, slot: int) -> tuple[int, int]:
        pos = self.positions.get(slot) or {}
        return int(pos.get("epoch", 0)), int(pos.get("offset", 0))

    # -- running -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Calls are in flight, a replica is being sought back, or an elastic job that is not
        stopping waits for replicas."""
        return (
            bool(self.pending)
            or bool(self.recovering)
            or (self.pool is not None and not self.stopping)
        )

    def wait(self, timeout: float = 0.5) -> list[ray.ObjectRef]:
        """The next finished call or seek, if one finishes within `timeout`."""
        refs = [*self.pending, *self.seeks]
        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
            return ready
        # Elastic with every replica lost, or a restarting replica to ask again: wait.
        time.sleep(timeout)
        return []

    def collect(self, ready: list[ray.ObjectRef]) -> list[dict[str, Any]]:
        """Take in replicas that joined and the finished calls `ready`, queue the next calls;
        return the stats of each call that succeeded."""
        if self.pool is not None and not self.stopping:
            for i, actor in self.pool.poll(self.replicas):
                self.replicas[i] = actor
                self._queue(i)
        self._ask_again()
        finished = []
        for ref in ready:
            if ref in self.seeks:
                self._sought(ref)
                continue
            if ref not in self.pending:
                continue  # a call to a replica replaced meanwhile, or a seek given up on
            i = self.pending.pop(ref)
            try:
                stats = ray.get(ref)
            except RayActorError as err:
                self._failed(i, err)
                continue
            self._record(i, stats)
            if stats["restarted"]:
                # Ray restarted it and this call, queued after the failure, ran before any
                # seek: its batches came from its stream's start. Seek it back now. A replica
                # that died between calls fails none: this call is the first sign of it.
                if self._count_death(i):
                    log.warning("replica %d was restarted between calls; seeking it back", i)
                self._seek(i)  # before the next call below, which the actor runs after it
            else:
                self.down.discard(i)
            # Aim each call at CALL_SECONDS of work.
            per_step = stats["wall_s"] / max(1, stats["steps"])
            steps = max(1, min(256, int(CALL_SECONDS / max(per_step, 1e-4))))
            if not self.stopping:
                self.pending[self.replicas[i].train.remote(steps)] = i
            finished.append(stats)
        return finished

    def _record(self, i: int, stats: dict[str, Any]) -> None:
        self.examples += stats["examples"]
        if not stats["restarted"]:  # a restarted actor's position is not its recorded one
            self.positions[i] = stats["position"]
        # Beside the last call, every call's steps and time so far: what a replica spent
        # waiting over the whole job, not in its last call only.
        before = self.replica_stats.get(i, {}).get("totals", {})
        add = {"steps": stats["steps"], "wall_s": stats["wall_s"], **stats["timings"]}
        stats["totals"] = {k: before.get(k, 0) + add.get(k, 0) for k in before.keys() | add}
        self.replica_stats[i] = stats

    def stop(self) -> None:
        """Let the calls in flight finish and submit no more; stop waiting for capacity."""
        self.stopping = True
        if self.pool is not None:
            self.pool.close()

    def find_unseen_restarts(self, timeout: float = RPC_TIMEOUT_S) -> None:
        """Count, and seek back, the replicas that died after their last call of the job.

        A replica's death is seen by the call it fails or by the first call its restarted
        life answers. One killed once its last call was in (the job had reached its budget)
        fails no call and answers none, and would be missing from the job's fault counts.
        So at the end each replica that no call saw down is asked whether it is a restarted
        life. In an elastic job a lost replica's slot is the pool's concern, not a restart."""
        if self.pool is not None:
            return
        deadline = time.monotonic() + timeout
        for i in [i for i in self.replicas if i not in self.down]:
            try:
                restarted = bool(self._ask(i, deadline, "ready").get("restarted"))
            except GetTimeoutError:
                continue
            except RayActorError:
                restarted = True  # it died and Ray had no restart left for it
            if restarted:
                self._count_death(i)
                log.warning("replica %d was restarted after its last call; seeking it back", i)
                # Out of restarts, it is not replaced: the job is over.
                with contextlib.suppress(RayActorError, GetTimeoutError):
                    self._resumed(i, self._ask(i, deadline, "seek", self._position(i)))

    def _ask(self, i: int, deadline: float, method: str, *args: Any) -> Any:
        """Call `method` of replica `i` and wait for it, asking again while Ray restarts the
        replica (its calls fail at once until the new life is up)."""
        while True:
            call = getattr(self.replicas[i], method).remote(*args)
            try:
                return ray.get(call, timeout=max(0.0, deadline - time.monotonic()))
            except ActorUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(RETRY_S)

    def close(self) -> None:
        """Stop every replica, and those still starting."""
        if self.pool is not None:
            self.pool.close()
        for actor in self.replicas.values():
            ray.kill(actor, no_restart=True)

    # -- faults --------------------------------------------------------------------------------
    def _count_death(self, i: int) -> bool:
        """Mark replica `i` down and count its death, once: its other queued call fails too,
        or reports the restart, and that is the same death. True if this one was new."""
        if i in self.down:
            return False
        self.down.add(i)
        self.faults["replica_failures"] += 1
        return True

    def _failed(self, i: int, err: BaseException) -> None:
        """A replica died mid-call: Ray restarts it; seek it to its data position and go on."""
        self._count_death(i)
        if self.pool is not None:
            log.warning("replica %d lost (%s); its slot is free", i, type(err).__name__)
            self._lost(i)
            return
        log.warning("replica %d failed (%s); restarting", i, type(err).__name__)
        if any(v == i for v in self.pending.values()):
            # Its other queued call fails too, or runs on the restarted actor and reports
            # `restarted`; either way it is sought then, once.
            return
        self._seek(i)

    def _lost(self, i: int) -> None:
        """Elastic: a replica died (usually with its node); free its slot, refill it later."""
        self.faults["replicas_lost"] += 1
        self.down.discard(i)  # the slot's next replica is a new one
        self.recovering.pop(i, None)
        self._drop_calls(i, self.pending, self.seeks)
        actor = self.replicas.pop(i, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)
        assert self.pool is not None
        self.pool.lost(i)

    def _seek(self, i: int) -> None:
        """Start seeking replica `i` back to its recorded data position; its calls resume once
        the seek is in (`_sought`). A seek already under way is not started twice."""
        if i in self.recovering:
            return
        now = time.monotonic()
        self.recovering[i] = (now, now + RPC_TIMEOUT_S)
        self._send_seek(i)

    def _send_seek(self, i: int) -> None:
        self.seeks[self.replicas[i].seek.remote(self._position(i))] = i

    def _position(self, i: int) -> dict:
        """Where replica `i` is to continue: the position it last reported, else its start."""
        return self.positions.get(i) or {"epoch": 0, "offset": 0}

    @staticmethod
    def _drop_calls(i: int, *calls: dict[ray.ObjectRef, int]) -> None:
        """Forget the calls to slot `i` in each of `calls` (pending or seeks)."""
        for refs in calls:
            for ref in [r for r, slot in refs.items() if slot == i]:
                del refs[ref]

    def _ask_again(self) -> None:
        """Seek again the replicas whose last seek found them restarting, once it is time;
        replace those not back within `RPC_TIMEOUT_S` (a seek that never answers included)."""
        if not self.recovering:
            return
        now = time.monotonic()
        in_flight = set(self.seeks.values())
        for i, (again, give_up) in list(self.recovering.items()):
            if now >= give_up:
                self._drop_calls(i, self.seeks)
                self._replace(i, f"not back within {RPC_TIMEOUT_S:g} s")
                self._recovered(i)
            elif i not in in_flight and now >= again:
                self._send_seek(i)

    def _sought(self, ref: ray.ObjectRef) -> None:
        """A seek is in: queue the replica's calls, ask again while Ray restarts it, or replace
        it at its data position when Ray has no restart left."""
        i = self.seeks.pop(ref)
        if i not in self.recovering:  # its slot was freed meanwhile (elastic)
            return
        try:
            resumed = ray.get(ref)
        except ActorUnavailableError:
            self.recovering[i] = (time.monotonic() + RETRY_S, self.recovering[i][1])
            return
        except RayActorError:
            self._replace(i, "no restart left")
        else:
            self._resumed(i, resumed)
        self._recovered(i)

    def _recovered(self, i: int) -> None:
        del self.recovering[i]
        if not self.stopping:
            self._queue(i)

    def _replace(self, i: int, why: str) -> None:
        """A fresh actor at the same data position."""
        log.warning("replica %d: %s; replacing it", i, why)
        self.faults["replica_replaced"] += 1
        self._drop_calls(i, self.pending)  # calls to the dead actor, failed or about to
        self.replicas[i] = self._new(i)
        self._resumed(i, self.positions.get(i))

    def _resumed(self, i: int, resumed: dict | None) -> None:
        # Recorded now, not only by its next call: a run that reaches its budget while the
        # replica is down makes no further call to it.
        if i in self.replica_stats:
            self.replica_stats[i]["resumed_from"] = resumed

    # -- what it reports -----------------------------------------------------------------------
    def skipped_images(self) -> int:
        """Undecodable images the replicas read past, as of their last calls."""
        return sum(int(x["skipped"]) for x in self.replica_stats.values())

    def pool_metrics(self) -> dict[str, float]:
        """How many replicas an elastic job has, is starting and has seen join (else none)."""
        if self.pool is None:
            return {}
        return {
            "replicas": float(len(self.replicas)),
            "replicas_starting": float(len(self.pool.starting)),
            "replicas_joined": float(self.pool.joined),
            "replica_nodes": float(self.pool.node_count()),
        }
