"""A discrete-event model of a parameter-server job: replicas, shards on PS nodes, their links,
stragglers, preemptions and the averager's reads, run in simulated time.

It plans clusters this machine cannot hold. What it models, and what it leaves out:

- A replica loops as `ps/replica_loop.py` does: load the newest weights that have arrived (or
  compute up to `max_lag` steps on the ones it has, or wait), compute `n_push` batches, hand the
  gradient to its communication thread and go on. That thread sends the gradient through the
  replica's NIC and then asks every shard for the weights it produced.
- Each PS node holds `shards / ps_nodes` shards, one core each, so its shards apply their slices
  of a push side by side: one push costs a node `apply_fixed_s` (what does not shrink with the
  slice: the call's handling, bookkeeping) plus `apply_s_per_mib` per MiB of one shard's slice.
  A node applies pushes in the order they arrive (first in, first out).
- Links: each PS node's NIC is a first-in-first-out server per direction, shared by every
  replica and the averager; a replica's NIC carries only its own traffic, so it bounds a
  transfer's end (the whole vector must cross it) without queueing. Every message also pays
  `rpc_s` of latency. Contention is first come first served, not fair sharing: throughput at
  saturation is the same, the spread of waits is not.
- PS nodes are alike and every push and read reaches each of them at the same moment, so their
  queues move in step: one node is simulated and stands for all of them (exact, not sampled).
- Staleness is what the shards measure: versions applied between the read that produced a
  replica's weights and the apply of the gradient computed on them.

Nothing here imports torch or Ray: a plan for a thousand replicas takes seconds.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True)
class Profile:
    """What one replica step and one shard apply cost: measured (`plan --calibrate`) or read
    from a profile file. `wire_bytes` is bytes per value on the wire (2 for bf16 transfer)."""

    name: str
    step_s: float
    batch: int
    params: int
    apply_fixed_s: float
    apply_s_per_mib: float
    rpc_s: float
    wire_bytes: int = 4
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("step_s", "apply_fixed_s", "apply_s_per_mib", "rpc_s"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"profile {key}={value!r}: expected a number >= 0")
        if self.step_s <= 0:
            raise ValueError(f"profile step_s={self.step_s!r}: expected a number > 0")
        for key in ("batch", "params"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise ValueError(f"profile {key}={getattr(self, key)!r}: expected an integer >= 1")
        if self.wire_bytes not in (2, 4):
            raise ValueError(f"profile wire_bytes={self.wire_bytes!r}: expected 2 or 4")


@dataclass(frozen=True)
class Setup:
    """The cluster and job settings a simulation runs; `link_gbps` is every node's NIC, each
    direction. `preemptions_per_hour` is per replica; `step_cv` spreads step times (gamma
    distributed; 1 is exponential)."""

    replicas: int
    shards: int = 1
    ps_nodes: int = 1
    link_gbps: float = 10.0
    max_lag: int = 1
    n_push: int = 1
    stragglers: int = 0
    straggler_factor: float = 2.0
    step_cv: float = 0.0
    preemptions_per_hour: float = 0.0
    restart_s: float = 60.0
    averager_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.ps_nodes < 1 or self.shards < self.ps_nodes:
            raise ValueError(
                f"replicas={self.replicas}, shards={self.shards}, ps_nodes={self.ps_nodes}: "
                "expected replicas >= 1 and shards >= ps_nodes >= 1"
            )
        checks = [
            ("link_gbps", self.link_gbps > 0, "a number > 0"),
            ("max_lag", self.max_lag >= 0, "an integer >= 0"),
            ("n_push", self.n_push >= 1, "an integer >= 1"),
            ("stragglers", 0 <= self.stragglers <= self.replicas, "between 0 and replicas"),
            ("straggler_factor", self.straggler_factor >= 1, "a number >= 1"),
            ("step_cv", 0 <= self.step_cv <= 10, "a number in [0, 10]"),
            ("preemptions_per_hour", self.preemptions_per_hour >= 0, "a number >= 0"),
            ("restart_s", self.restart_s > 0, "a number > 0"),
            ("averager_interval_s", self.averager_interval_s >= 0, "a number >= 0 (0: none)"),
        ]
        for name, ok, expected in checks:
            if not ok:  # NaN fails every comparison, so it lands here too
                raise ValueError(f"{name}={getattr(self, name)!r}: expected {expected}")


@dataclass
class Result:
    """Rates over the measured part of a run (after its warm-up)."""

    images_per_s: float
    ideal_images_per_s: float
    updates_per_s: float
    staleness: Counter
    utilization: dict[str, float]
    seconds: float
    pushes: int
    apply_wait_s: float = 0.0

    @property
    def efficiency(self) -> float:
        """Images/s against N replicas that never wait (stragglers and preemptions count)."""
        return self.images_per_s / self.ideal_images_per_s

    @property
    def bottleneck(self) -> str:
        return max(self.utilization, key=lambda k: self.utilization[k])

    def staleness_stats(self) -> dict[str, float]:
        values = sorted(self.staleness.elements())
        if not values:
            return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
        return {
            "mean": sum(values) / len(values),
            "p50": float(values[len(values) // 2]),
            "p95": float(values[min(len(values) - 1, int(0.95 * len(values)))]),
            "max": float(values[-1]),
        }


@dataclass
class _Pull:
    owner: int
    first: float  # when the replica asked
    version: int = 0  # of the weights read
    arrival: float | None = None  # None while in flight


@dataclass
class _Replica:
    epoch: int = 0
    up: bool = True
    weights: int = 0  # the version of the weights it computes on
    pending: deque = field(default_factory=deque)
    lag: int = 0
    comm_free: float = 0.0
    waiting_on: _Pull | None = None
    computing_since: float | None = None
    factor: float = 1.0


class _Server:
    """A first-in-first-out server. Its work done by a time is what it was given less its
    backlog then (exact while its backlog has no gaps, as it has none under load)."""

    def __init__(self) -> None:
        self.free = 0.0
        self.booked = 0.0
        self.at_warm = 0.0

    def serve(self, t: float, seconds: float) -> tuple[float, float]:
        start = max(t, self.free)
        self.free = start + seconds
        self.booked += seconds
        return start, self.free

    def work_by(self, t: float) -> float:
        return self.booked - max(0.0, self.free - t)


def simulate(profile: Profile, setup: Setup, pushes: int = 0, seed: int = 0) -> Result:
    """Run until node 0 has applied `pushes` gradients (default: 30 per replica, at least 300);
    the first fifth is warm-up and left out of every rate."""
    return _Simulation(profile, setup, pushes or max(300, 30 * setup.replicas), seed).run()


class _Simulation:
    def __init__(self, profile: Profile, setup: Setup, pushes: int, seed: int) -> None:
        self.p, self.s = profile, setup
        self.rng = random.Random(seed)
        self.warm_pushes = max(1, pushes // 5)
        self.target = max(pushes, self.warm_pushes + 1)
        wire = profile.params * profile.wire_bytes
        link = setup.link_gbps * 1e9 / 8
        self.vector_s = wire / link  # the whole vector through one replica's NIC
        self.node_s = wire / setup.ps_nodes / link  # one node's share through its NIC
        slice_mib = profile.params * 4 / setup.shards / MIB
        self.apply_s = profile.apply_fixed_s + profile.apply_s_per_mib * slice_mib
        self.step_s = profile.step_s * setup.n_push
        # One PS node, standing for all `setup.ps_nodes` (see the module's docstring).
        self.ingress, self.egress, self.apply = _Server(), _Server(), _Server()
        self.version = 0  # pushes the node has taken (applied in this order)
        self.current = 0  # of which applied by now: what a read gets
        self.window = math.inf  # set when warm-up ends
        self.applied = 0
        self.t_warm = 0.0
        self.t_end = 0.0
        self.staleness: Counter[int] = Counter()
        self.compute_busy = 0.0
        self.waits = [0.0, 0]  # queueing before a shard's apply: seconds, pushes
        self.nic_busy = 0.0
        self.events: list = []
        self.seq = 0
        self.replicas = [_Replica() for _ in range(setup.replicas)]
        for i, r in enumerate(self.replicas):
            r.factor = setup.straggler_factor if i < setup.stragglers else 1.0

    # -- the event queue -----------------------------------------------------------------
    def at(self, t: float, kind: str, *args: object) -> None:
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, args))

    def run(self) -> Result:
        for i in range(self.s.replicas):
            # Replicas start a little apart, as actors do: lock-step starts are not the case.
            self.at(self.rng.uniform(0, self.step_s), "step", i, 0)
            self._schedule_preemption(i, 0.0)
        if self.s.averager_interval_s > 0:
            self.at(self.s.averager_interval_s, "averager")
        while self.events and self.applied < self.target:
            t, _, kind, args = heapq.heappop(self.events)
            getattr(self, "_" + kind)(t, *args)
        return self._result()

    def _result(self) -> Result:
        seconds = self.t_end - self.t_warm
        counted = self.applied - self.warm_pushes
        images = counted * self.p.batch * self.s.n_push
        ideal = self.s.replicas * self.p.batch / self.p.step_s
        busy = {"shard apply": self.apply, "PS NIC in": self.ingress, "PS NIC out": self.egress}
        utilization = {k: (x.work_by(self.t_end) - x.at_warm) / seconds for k, x in busy.items()}
        utilization["replica compute"] = self.compute_busy / seconds / self.s.replicas
        utilization["replica NIC"] = self.nic_busy / seconds / self.s.replicas
        return Result(
            images_per_s=images / seconds,
            ideal_images_per_s=ideal,
            updates_per_s=counted / seconds,
            staleness=self.staleness,
            utilization=utilization,
            seconds=seconds,
            pushes=counted,
            apply_wait_s=self.waits[0] / max(1, self.waits[1]),
        )

    def _in_window(self, start: float, end: float) -> float:
        return max(0.0, end - max(start, self.window))

    # -- a replica -------------------------------------------------------------------------
    def _step(self, t: float, i: int, epoch: int) -> None:
        r = self.replicas[i]
        if r.epoch != epoch or not r.up:
            return
        r.waiting_on = None
        arrived = [k for k, pull in enumerate(r.pending) if pull.arrival is not None]
        arrived = [k for k in arrived if r.pending[k].arrival <= t]
        if arrived:
            newest = arrived[-1]
            r.weights = r.pending[newest].version
            for _ in range(newest + 1):
                r.pending.popleft()
            r.lag = 0
        elif not r.pending:
            # Nothing in flight (the first step of a life): read the weights and wait for them.
            pull = _Pull(i, first=t)
            r.pending.append(pull)
            r.waiting_on = pull
            self._read(t, pull, self.current)
            return
        elif r.lag < self.s.max_lag:
            r.lag += 1
        else:
            oldest = r.pending[0]
            if oldest.arrival is None:
                r.waiting_on = oldest
            else:
                self.at(oldest.arrival, "step", i, epoch)
            return
        seconds = self.step_s * r.factor
        if self.s.step_cv > 0:
            shape = 1.0 / self.s.step_cv**2
            seconds *= self.rng.gammavariate(shape, 1.0 / shape)
        r.computing_since = t
        self.at(t + seconds, "computed", i, epoch)

    def _computed(self, t: float, i: int, epoch: int) -> None:
        r = self.replicas[i]
        if r.epoch != epoch or not r.up:
            return
        self.compute_busy += self._in_window(r.computing_since, t)
        r.computing_since = None
        send = max(t, r.comm_free)
        r.comm_free = send + self.vector_s
        self.nic_busy += 2 * self._in_window(send, send + self.vector_s)  # the push and its pull
        pull = _Pull(i, first=send)
        r.pending.append(pull)
        while len(r.pending) > 2:  # the loop keeps the two newest pulls; older are superseded
            r.pending.popleft()
        self.at(send, "push", pull, r.weights)
        self._step(t, i, epoch)

    # -- a PS node -------------------------------------------------------------------------
    def _push(self, t: float, pull: _Pull, weights: int) -> None:
        _, sent = self.ingress.serve(t, self.node_s)
        arrive = max(sent, t + self.vector_s) + self.p.rpc_s
        start, applied = self.apply.serve(arrive, self.apply_s)
        self.version += 1
        if self.window < math.inf:
            self.staleness[self.version - 1 - weights] += 1
            self.waits[0] += start - arrive
            self.waits[1] += 1
        self.at(applied, "applied")
        self.at(applied, "read", pull, self.version)

    def _applied(self, t: float) -> None:
        self.applied += 1
        self.t_end = t
        if self.applied == self.warm_pushes:
            self.t_warm = self.window = t
            for server in (self.ingress, self.egress, self.apply):
                server.at_warm = server.work_by(t)

    def _read(self, t: float, pull: _Pull, version: int) -> None:
        self.current = max(self.current, version)
        _, done = self.egress.serve(t, self.node_s)
        pull.version = version
        pull.arrival = max(done, pull.first + self.vector_s) + self.p.rpc_s
        r = self.replicas[pull.owner]
        if r.waiting_on is pull:
            self.at(pull.arrival, "step", pull.owner, r.epoch)

    def _averager(self, t: float) -> None:
        self.egress.serve(t, self.node_s)
        self.at(t + self.s.averager_interval_s, "averager")

    # -- preemptions -----------------------------------------------------------------------
    def _schedule_preemption(self, i: int, t: float) -> None:
        if self.s.preemptions_per_hour > 0:
            rate = self.s.preemptions_per_hour / 3600.0
            self.at(t + self.rng.expovariate(rate), "preempt", i, self.replicas[i].epoch)

    def _preempt(self, t: float, i: int, epoch: int) -> None:
        r = self.replicas[i]
        if r.epoch != epoch:
            return
        if r.computing_since is not None:
            self.compute_busy += self._in_window(r.computing_since, t)  # spent, then lost
        r.epoch += 1
        r.up = False
        self.at(t + self.s.restart_s, "restart", i)

    def _restart(self, t: float, i: int) -> None:
        r = self.replicas[i]
        r.up, r.pending, r.lag, r.waiting_on, r.computing_since = True, deque(), 0, None, None
        r.comm_free = t
        self._step(t, i, r.epoch)
        self._schedule_preemption(i, t)
