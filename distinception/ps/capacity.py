"""What a job asks of the cluster, and whether the cluster has it or can get it.

Checked once before anything starts (and before any data is generated): an actor that cannot be
placed waits inside Ray forever without a word, so a job that does not fit must either fail in
one line naming the fields to lower, or say that it is waiting for nodes and show them coming.

- A local Ray that this process started cannot grow: fail at once.
- A cluster whose autoscaler is read-only (a head started without `--autoscaling-config`, or
  nodes added by hand) cannot grow either: fail at once.
- A cluster with an autoscaler is asked for the job's actors (`request_resources`, one bundle
  per actor) and watched through the status the autoscaler publishes after each update: a line
  on stderr whenever the cluster grows or nodes are launching or booting. When several updates
  in a row after it saw the request launch nothing and add nothing, the autoscaler cannot help
  (its `max_workers` is reached, or no node type has the resource): fail in one line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import ray

from distinception.config import ConfigError, JobConfig

log = logging.getLogger(__name__)

#: Autoscaler updates in a row, after it saw the request, that launch nothing and add nothing
#: before the job gives up on it (Ray's default update interval is 5 s).
STALL_UPDATES = 5
#: At least this long without progress, too, so a fast-updating autoscaler is given time.
STALL_SECONDS = 10.0
#: How long a created node that no setup step reports on ("uninitialized": providers without
#: node updaters, such as the fake local one) counts as on its way. One that died before it
#: joined stays listed that way, and must not keep the job waiting forever.
BOOT_GRACE_SECONDS = 120.0
#: A progress line at least this often while nothing changes.
QUIET_SECONDS = 30.0
POLL_SECONDS = 1.0


def replica_bundle(cfg: JobConfig) -> dict[str, float]:
    """What one replica asks of a node (zero amounts left out): the placement of a replica
    actor, a trial's replica bundle and the elastic pool's request all use this one."""
    at = cfg.placement
    bundle = {"CPU": at.replica_cpus, "GPU": at.replica_gpus, **at.replica_resources}
    return {k: float(v) for k, v in bundle.items() if v > 0}


def actor_bundles(cfg: JobConfig, replicas: int | None = None) -> list[dict[str, float]]:
    """One resource bundle per actor: the shards, the averager (placed like a shard) and
    `replicas` replicas (default `ps.num_replicas`). The autoscaler packs bundles onto node
    types, so asking per actor (not in all) launches nodes that can hold them."""
    at = cfg.placement
    n = cfg.ps.num_replicas if replicas is None else replicas
    shard = {"CPU": at.shard_cpus, **at.shard_resources}
    averager = {"CPU": at.averager_cpus, **at.shard_resources}
    bundles = [shard] * cfg.ps.num_shards + [averager] + [replica_bundle(cfg)] * n
    return [b for b in ({k: float(v) for k, v in b.items() if v > 0} for b in bundles) if b]


def actor_demand(cfg: JobConfig, replicas: int | None = None) -> dict[str, float]:
    """What the job's actors ask of the cluster in all (CPU, GPU, custom resources)."""
    need: Counter[str] = Counter()
    for bundle in actor_bundles(cfg, replicas):
        need.update(bundle)
    return {k: round(v, 6) for k, v in need.items() if v > 0}


def shortfall(need: dict[str, float], have: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-6}


@dataclass(frozen=True)
class AutoscalerStatus:
    """What the autoscaler published after its last update, as far as a job needs it."""

    time: float  # when the update ran (the autoscaler's clock, seconds since the epoch)
    readonly: bool  # it watches nodes but can never add one
    requested: bool  # the update saw a `request_resources` demand
    launching: int  # nodes asked of the cloud provider, not yet created
    booting: dict[str, str]  # created nodes that have not joined Ray yet: id -> setup status
    failed: int  # nodes that failed to launch or start


def autoscaler_status() -> AutoscalerStatus | None:
    """The status the (v1) autoscaler keeps in the cluster's key-value store, or None where no
    autoscaler reports there (autoscaler v2, or a cluster without a monitor)."""
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        raw = _internal_kv_get("__autoscaling_status")
    except Exception as err:  # a private key: never let reading it break a job
        log.debug("could not read the autoscaler status: %s", err)
        return None
    if not raw:
        return None
    status = json.loads(raw)
    report = status.get("autoscaler_report") or {}
    load = status.get("load_metrics_report") or {}
    readonly_prefix = format_readonly_node_type("")
    types = set(report.get("active_nodes") or {}) | set(
        (report.get("node_type_mapping") or {}).values()
    )
    pending = report.get("pending_nodes") or []
    return AutoscalerStatus(
        time=float(status.get("time", 0.0)),
        readonly=bool(types) and all(t.startswith(readonly_prefix) for t in types),
        requested=bool(load.get("request_demand")),
        launching=sum((report.get("pending_launches") or {}).values()),
        booting=booting(pending, sum((report.get("active_nodes") or {}).values()), ray.nodes()),
        failed=len(report.get("failed_nodes") or []),
    )


def booting(pending: list, active: int, nodes: list[dict]) -> dict[str, str]:
    """The nodes the autoscaler lists as pending that have not joined Ray yet (id -> status).

    A pending entry is (ip, node type, status). A node that has joined but whose setup status
    the provider never updates (the fake local provider keeps every node "uninitialized") stays
    pending forever, so take the pending entries whose address is not an alive Ray node, and no
    more of them than the nodes the autoscaler knows of beyond the alive workers."""
    nodes = [n for n in nodes if n.get("Alive")]
    addresses = {n.get("NodeManagerAddress") for n in nodes}
    workers = sum("node:__internal_head__" not in n.get("Resources", {}) for n in nodes)
    unmatched = sorted((str(e[0]), str(e[-1])) for e in pending if e and e[0] not in addresses)
    return dict(unmatched[: max(0, active + len(pending) - workers)])


def _request(bundles: list[dict[str, float]]) -> None:
    from distinception.ps.elastic import request_capacity

    request_capacity(bundles)


class CapacityWait:
    """Decides, from one observation to the next, whether to wait or give up; it holds no Ray
    handle, so unit tests drive it with recorded observations."""

    def __init__(self, need: dict[str, float], started: float) -> None:
        self.need = need
        self.started = started
        self.last_progress = started
        self.best: dict[str, float] = {}
        self.updates_seen: set[float] = set()
        self.stalled_updates = 0
        self.last_line = ("", -1.0)
        self.first_seen: dict[str, float] = {}

    def coming(self, status: AutoscalerStatus | None, now: float) -> tuple[int, int]:
        """(launching, booting): the nodes on their way, as far as this job believes."""
        if status is None:
            return 0, 0
        on_the_way = 0
        for node, state in status.booting.items():
            if state == "update-failed":
                continue
            first = self.first_seen.setdefault(node, now)
            on_the_way += state != "uninitialized" or now - first < BOOT_GRACE_SECONDS
        return status.launching, on_the_way

    def observe(
        self, have: dict[str, float], status: AutoscalerStatus | None, now: float
    ) -> str | None:
        """None while waiting; 'fits' once the job fits; 'stuck' when no node is coming."""
        if not shortfall(self.need, have):
            return "fits"
        grew = any(have.get(k, 0.0) > self.best.get(k, 0.0) + 1e-6 for k in self.need)
        self.best = {k: max(have.get(k, 0.0), self.best.get(k, 0.0)) for k in self.need}
        if grew or any(self.coming(status, now)):
            self.last_progress = now
            self.stalled_updates = 0
        elif status is not None and status.requested and status.time not in self.updates_seen:
            self.stalled_updates += 1
        if status is not None:
            self.updates_seen.add(status.time)
        stalled = now - self.last_progress >= STALL_SECONDS
        return "stuck" if stalled and self.stalled_updates >= STALL_UPDATES else None

    def line(self, have: dict[str, float], status: AutoscalerStatus | None, now: float) -> str:
        """The progress line, or "" when it would repeat the last one within QUIET_SECONDS."""
        counts = ", ".join(f"{k} {have.get(k, 0.0):g}/{v:g}" for k, v in self.need.items())
        nodes = ""
        if status is not None:
            launching, on_the_way = self.coming(status, now)
            parts = [
                f"{n} {word}"
                for n, word in (
                    (launching, "launching"),
                    (on_the_way, "booting"),
                    (status.failed, "failed"),
                )
                if n
            ]
            nodes = f"; nodes {', '.join(parts)}" if parts else ""
        text = f"distinception: waiting for the autoscaler: {counts}{nodes}"
        last, at = self.last_line
        if text == last and now - at < QUIET_SECONDS:
            return ""
        self.last_line = (text, now)
        return f"{text} ({now - self.started:.0f} s)"


def _fields(cfg: JobConfig, key: str) -> str:
    ps, at = cfg.ps, cfg.placement
    n = (
        f"placement.min_replicas={at.min_replicas}"
        if at.elastic
        else f"ps.num_replicas={ps.num_replicas}"
    )
    return {
        "CPU": f"{n} x placement.replica_cpus={at.replica_cpus:g} + "
        f"ps.num_shards={ps.num_shards} x placement.shard_cpus={at.shard_cpus:g} + "
        f"placement.averager_cpus={at.averager_cpus:g}",
        "GPU": f"{n} x placement.replica_gpus={at.replica_gpus:g}",
    }.get(
        key,
        f"placement.replica_resources={at.replica_resources}, "
        f"placement.shard_resources={at.shard_resources}",
    )


def _lower(key: str) -> str:
    return {
        "CPU": "lower ps.num_replicas or placement.replica_cpus",
        "GPU": "set placement.replica_gpus=0 or run on a GPU machine",
    }.get(key, "drop the custom resources or join a cluster that has them")


def check_fits(
    cfg: JobConfig,
    *,
    local: bool,
    out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> None:
    """Return once the cluster holds what the job's actors ask (with `placement.elastic`, its
    `placement.min_replicas`); raise ConfigError, one line, when it does not and cannot grow."""
    replicas = cfg.placement.min_replicas if cfg.placement.elastic else None
    need = actor_demand(cfg, replicas)
    have = ray.cluster_resources()
    short = shortfall(need, have)
    if not short:
        return
    key, value = next(iter(short.items()))

    def what(have: dict[str, float]) -> str:
        return (
            f"the job's actors ask for {value:g} {key} ({_fields(cfg, key)}) "
            f"and the cluster has {have.get(key, 0.0):g}"
        )

    if local:
        raise ConfigError(f"{what(have)}; {_lower(key)}, or join a cluster with --address")
    status = autoscaler_status()
    if status is not None and status.readonly:
        raise ConfigError(f"{what(have)} and no autoscaler to add nodes; {_lower(key)}")
    out = out or sys.stderr
    _request(actor_bundles(cfg, replicas))
    try:
        wait = CapacityWait(need, clock())
        while True:
            now = clock()
            verdict = wait.observe(have, status, now)
            if verdict == "fits":
                return
            if verdict == "stuck":
                raise ConfigError(
                    f"{what(have)}, and the autoscaler started no node for it in "
                    f"{now - wait.started:.0f} s (max_workers reached, or no node type has "
                    f"{key}); {_lower(key)}"
                )
            text = wait.line(have, status, now)
            if text:
                print(text, file=out, flush=True)
            time.sleep(POLL_SECONDS)
            have = ray.cluster_resources()
            status = autoscaler_status()
    finally:
        # The actors themselves keep their nodes busy from here on; a request left standing
        # would keep nodes up after the job ends.
        _request([])
