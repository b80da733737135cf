"""What a job asks of the cluster, and whether the cluster has it or can get it.

Checked once before anything starts: a job that cannot be placed would otherwise wait inside
Ray forever without a word.
"""

from __future__ import annotations

import sys
from collections import Counter

import ray

from distinception.config import ConfigError, JobConfig


def actor_demand(cfg: JobConfig, replicas: int | None = None) -> dict[str, float]:
    """What the job's actors ask of the cluster in all (CPU, GPU, custom resources): shards and
    the averager placed like a shard, and `replicas` replicas (default `ps.num_replicas`)."""
    ps = cfg.ps
    n = ps.num_replicas if replicas is None else replicas
    need: Counter[str] = Counter()
    need["CPU"] += ps.num_shards * ps.shard_cpus + ps.averager_cpus + n * ps.replica_cpus
    need["GPU"] += n * ps.replica_gpus
    for key, value in ps.shard_resources.items():
        need[key] += (ps.num_shards + 1) * value
    for key, value in ps.replica_resources.items():
        need[key] += n * value
    return {k: round(v, 6) for k, v in need.items() if v > 0}


def check_fits(cfg: JobConfig, *, local: bool) -> None:
    """Compare what the job asks with what the cluster has before anything starts. A local Ray
    this process started cannot grow: a job that does not fit would wait forever, so it fails in
    one line naming the fields to lower. A cluster may be waiting for its autoscaler: say so."""
    ps = cfg.ps
    need = actor_demand(cfg, ps.min_replicas if ps.elastic else None)
    have = ray.cluster_resources()
    short = {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-6}
    if not short:
        return
    key, value = next(iter(short.items()))
    n = f"ps.min_replicas={ps.min_replicas}" if ps.elastic else f"ps.num_replicas={ps.num_replicas}"
    fields = {
        "CPU": f"{n} x ps.replica_cpus={ps.replica_cpus:g} + "
        f"ps.num_shards={ps.num_shards} x ps.shard_cpus={ps.shard_cpus:g} + "
        f"ps.averager_cpus={ps.averager_cpus:g}",
        "GPU": f"{n} x ps.replica_gpus={ps.replica_gpus:g}",
    }.get(
        key, f"ps.replica_resources={ps.replica_resources}, ps.shard_resources={ps.shard_resources}"
    )
    has = have.get(key, 0.0)
    what = f"the job's actors ask for {value:g} {key} ({fields}) and the cluster has {has:g}"
    if local:
        lower = {
            "CPU": "lower ps.num_replicas or ps.replica_cpus",
            "GPU": "set ps.replica_gpus=0 or run on a GPU machine",
        }.get(key, "drop the custom resources or join a cluster that has them")
        raise ConfigError(f"{what}; {lower}, or join a cluster with --address")
    print(f"distinception: {what}; waiting for the autoscaler to add nodes", file=sys.stderr)
