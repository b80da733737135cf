"""From the simulator to advice: how many PS nodes and shards N replicas need, how many
replicas a cluster YAML's PS nodes hold, and the tables `distinception plan` prints.

"Enough" is a share of the images/s that N replicas reach if they never wait (`target`,
0.9 by default). Sharding wider helps only while the PS nodes' NICs or the shards' per-byte
cost are what saturates: every push reaches every shard, so a shard's fixed cost per push caps
the pushes per second whatever the shard count. Past that, only pushing less often helps
(`ps.n_push`: a replica sums that many batches into one push, DistBelief's n_push), and the
plan says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distinception.config import ConfigError
from distinception.plan.sim import MIB, Profile, Result, Setup, simulate

#: PS node counts tried, and `ps.n_push` values tried when no node count is enough.
NODE_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
N_PUSH = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Plan:
    setup: Setup
    result: Result
    target: float

    @property
    def met(self) -> bool:
        return self.result.efficiency >= self.target

    @property
    def saturates_first(self) -> str:
        """The busiest resource other than the replicas' own compute: the one that stops the
        throughput growing when replicas are added."""
        shared = {k: v for k, v in self.result.utilization.items() if k != "replica compute"}
        return max(shared, key=lambda k: shared[k])

    def row(self) -> dict[str, Any]:
        s, r = self.setup, self.result
        stale = r.staleness_stats()
        return {
            "replicas": s.replicas,
            "link_gbps": s.link_gbps,
            "ps_nodes": s.ps_nodes,
            "shards": s.shards,
            "n_push": s.n_push,
            "images_per_s": round(r.images_per_s),
            "efficiency": round(r.efficiency, 3),
            "staleness_mean": round(stale["mean"], 1),
            "staleness_p95": stale["p95"],
            "saturates_first": self.saturates_first,
            "utilization": {k: round(v, 3) for k, v in r.utilization.items()},
            "met": self.met,
        }


def _setup(base: Setup, replicas: int, nodes: int, cores: int, n_push: int) -> Setup:
    return dataclasses.replace(
        base, replicas=replicas, ps_nodes=nodes, shards=nodes * cores, n_push=n_push
    )


def _fewest_nodes(profile: Profile, base: Setup, cores: int, n_push: int) -> int | None:
    """The first node count at which no PS resource is booked past its capacity by the pushes
    the replicas offer at full speed (the simulation starts there), or None when the shards'
    fixed cost per push alone is past it: no node count helps then."""
    pushes_per_s = base.replicas / (profile.step_s * n_push)
    if pushes_per_s * profile.apply_fixed_s >= 1.0:
        return None
    link = base.link_gbps * 1e9 / 8
    for nodes in NODE_COUNTS:
        slice_mib = profile.params * 4 / (nodes * cores) / MIB
        apply = profile.apply_fixed_s + profile.apply_s_per_mib * slice_mib
        nic = profile.params * profile.wire_bytes / nodes / link
        if pushes_per_s * max(apply, nic) < 1.0:
            return nodes
    return None


def plan_replicas(
    profile: Profile,
    replicas: int,
    base: Setup,
    cores_per_ps_node: int,
    target: float = 0.9,
    seed: int = 0,
) -> Plan:
    """The fewest PS nodes (each with one shard per core) that keep `replicas` at `target`,
    pushing every step if that can be done, else every `n_push` steps; the widest plan tried
    when nothing is enough."""
    base = dataclasses.replace(base, replicas=replicas)
    best: Plan | None = None
    for n_push in N_PUSH:
        first = _fewest_nodes(profile, base, cores_per_ps_node, n_push)
        counts = [n for n in NODE_COUNTS if first is not None and n >= first]
        for nodes in counts[:3]:  # queueing can ask for a little more than the capacity bound
            setup = _setup(base, replicas, nodes, cores_per_ps_node, n_push)
            plan = Plan(setup, simulate(profile, setup, _pushes(replicas), seed), target)
            if best is None or plan.result.efficiency > best.result.efficiency:
                best = plan
            if plan.met:
                return plan
    if best is None:  # even the widest, least frequent pushes are past a shard's fixed cost
        setup = _setup(base, replicas, NODE_COUNTS[-1], cores_per_ps_node, N_PUSH[-1])
        best = Plan(setup, simulate(profile, setup, _pushes(replicas), seed), target)
    return best


def _pushes(replicas: int) -> int:
    """Pushes to simulate: enough for every replica's rate to settle, few enough for a plan of
    a thousand replicas to take seconds."""
    return max(2000, 16 * replicas)


def max_replicas(
    profile: Profile, base: Setup, target: float = 0.9, limit: int = 4096, seed: int = 0
) -> tuple[int, Plan]:
    """The most replicas `base`'s PS nodes and shards keep at `target` (up to `limit`), with the
    plan one replica more would break (or the limit's)."""
    lo, hi = 0, limit
    broke: Plan | None = None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        setup = dataclasses.replace(base, replicas=mid)
        plan = Plan(setup, simulate(profile, setup, _pushes(mid), seed), target)
        if plan.met:
            lo = mid
        else:
            hi, broke = mid - 1, plan
    if broke is None:
        setup = dataclasses.replace(base, replicas=limit)
        broke = Plan(setup, simulate(profile, setup, _pushes(limit), seed), target)
    return lo, broke


@dataclass(frozen=True)
class ClusterSpec:
    """What a Ray cluster YAML says about PS nodes and replicas."""

    path: str
    ps_nodes: int
    cores_per_ps_node: int
    max_replicas: int


def read_cluster(path: str) -> ClusterSpec:
    """PS nodes are the node types with a `ps` resource (the head counts once, a worker type
    `max_workers` times); replicas are `replica` resources times `max_workers`."""
    file = Path(path).expanduser()
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        first = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"--cluster={path!r}: cannot be read as YAML ({first})") from None
    types = (doc or {}).get("available_node_types") if isinstance(doc, dict) else None
    if not isinstance(types, dict) or not types:
        raise ConfigError(
            f"--cluster={path!r}: expected a Ray cluster YAML with available_node_types"
        )
    head = doc.get("head_node_type")
    ps_nodes, cores, replicas = 0, 0, 0
    for name, node in types.items():
        resources = (node or {}).get("resources") or {}
        count = 1 if name == head else int((node or {}).get("max_workers", 0))
        if resources.get("ps"):
            ps_nodes += count
            cores = max(cores, int(resources.get("CPU", 1)))
        replicas += count * int(resources.get("replica", 0))
    if not ps_nodes:
        raise ConfigError(
            f"--cluster={path!r}: no node type has a `ps` resource, so no node is meant for shards"
        )
    return ClusterSpec(str(path), ps_nodes, cores, replicas)


def format_plans(plans: list[Plan], profile: Profile) -> str:
    lines = [
        f"profile {profile.name}: {profile.params:,} params ({profile.wire_bytes} bytes each on "
        f"the wire), batch {profile.batch}, step {profile.step_s * 1000:.1f} ms; a shard's push "
        f"costs {profile.apply_fixed_s * 1000:.2f} ms + {profile.apply_s_per_mib * 1000:.3f} "
        "ms/MiB",
        "",
        "| replicas | link Gb/s | PS nodes | shards | n_push | images/s | of ideal | staleness "
        "mean / p95 | saturates first |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for plan in plans:
        r = plan.row()
        mark = "" if plan.met else " (not enough)"
        lines.append(
            f"| {r['replicas']:,} | {r['link_gbps']:g} | {r['ps_nodes']} | {r['shards']} | "
            f"{r['n_push']} | {r['images_per_s']:,} | {r['efficiency']:.0%}{mark} | "
            f"{r['staleness_mean']:g} / {r['staleness_p95']:g} | {r['saturates_first']} "
            f"({r['utilization'][r['saturates_first']]:.0%}) |"
        )
    if any(plan.setup.n_push > 1 for plan in plans):
        lines += [
            "",
            "n_push k: set ps.n_push=k and ps.n_fetch=k (each replica sums k batches into one "
            "push and reads the weights once per push)",
        ]
    return "\n".join(lines)
