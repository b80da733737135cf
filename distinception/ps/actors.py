"""The Ray shell: the top layer of `ps/`, and the only module that turns classes into actors.

Each actor is a plain class (`ShardServer`, `ReplicaLoop`, `AveragerLoop`) given what only Ray
knows: its node, whether it is a restarted life of a failed actor, the shard handles behind the
names it was given, and the object-store channel (`transport.objstore`). The data plane is
replica <-> shard and averager <-> shard, directly: the driver never handles weights or
gradients while training.

Wire protocol of a shard:
- `attach()` -> its node, incarnation, and (when it has one) its shared-memory file and doorbell.
- `pull()` -> (version, incarnation, [ref]): the weights of `version` as one object-store ref,
  put at most once per version (`objstore.Publication`).
- `push(grad, base_version, examples, fingerprint, incarnation)` -> a `PushResult` as a dict.
- Same node (`transport.channel=auto`): a replica reads the weights from the shard's shared-memory
  file instead of pulling, and pushes by writing its gradient into a shared-memory slot and
  ringing the shard's doorbell with `push`'s arguments, the slot's path in place of the gradient
  (`push_shared` takes the same request as a Ray call). See `transport.shm`.

Each actor is built from one frozen spec (`specs.py`: `ShardSpec`, `ReplicaSpec`,
`AveragerSpec`). Specs stay small and by value, so a restart never depends on an object that may
have left the store: the coordinator registers its shards under job-unique names and hands
replicas and the averager those names (`shard_handles`), and each shard builds its initial
slice from `run.model_seed` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ray
import torch

from distinception.config import JobConfig
from distinception.ps.averager import AveragerLoop
from distinception.ps.replica_loop import ReplicaLoop, train_stream
from distinception.ps.shard_server import ShardServer
from distinception.ps.specs import AveragerSpec, ReplicaSpec, ShardSpec
from distinception.ps.transport import RPC_TIMEOUT_S
from distinception.ps.transport.objstore import Publication, ShardLinks

__all__ = [
    "RPC_TIMEOUT_S",
    "AveragerSpec",
    "ReplicaSpec",
    "ShardSpec",
    "remote_averager",
    "remote_replica",
    "remote_shard",
]


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))


def _reconstructed() -> bool:
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _connect(
    shards: list[Any], ranges: list[tuple[int, int]], transport: str
) -> Callable[[Callable[[str], None]], ShardLinks]:
    return lambda count: ShardLinks(shards, ranges, transport, count)


class ShardActor(ShardServer):
    def __init__(self, spec: ShardSpec, init: list[ray.ObjectRef] | None = None) -> None:
        """`init`: the initial slice, in the object store (benchmarks); None builds the model
        from `run.model_seed` instead (the coordinator's way, which a restart can repeat)."""
        torch.set_num_threads(1)
        super().__init__(
            spec.index,
            spec.start,
            spec.stop,
            spec.layout,
            None if init is None else ray.get(init[0]),
            spec.cfg,
            spec.examples_per_epoch,
            spec.checkpoint_uri,
            spec.resume,
            shm_dir=spec.shm_dir,
            num_classes=spec.num_classes,
            node_id=_node_id(),
            restarted=_reconstructed(),
        )
        self.publication = Publication()

    def pull(self) -> tuple[int, str, list[ray.ObjectRef]]:
        with self.mutex:
            return self.publication.pull(
                self.core.version, self.core.incarnation, self.core.flat, self.dtype
            )


class ReplicaActor(ReplicaLoop):
    def __init__(self, spec: ReplicaSpec) -> None:
        cfg = spec.cfg
        _threads(cfg.placement.replica_cpus)
        super().__init__(
            spec.index,
            cfg,
            spec.num_classes,
            train_stream(cfg, spec.data_path, spec.index, spec.num_consumers),
            _connect(list(spec.shards), list(spec.ranges), cfg.transport.channel),
            position=spec.position,
            restarted=_reconstructed(),
            slowdown=spec.slowdown,
        )

    def ready(self) -> dict[str, Any]:
        """Answers once the actor is placed and built; says on which node, and whether this is
        a restarted life whose restart no call has reported yet."""
        return {"index": self.index, "node_id": _node_id(), "restarted": self.restarted}


class AveragerActor(AveragerLoop):
    def __init__(self, spec: AveragerSpec) -> None:
        cfg = spec.cfg
        _threads(cfg.placement.averager_cpus)
        super().__init__(
            cfg,
            spec.data_path,
            spec.num_classes,
            _connect(list(spec.shards), list(spec.ranges), cfg.transport.channel),
            spec.checkpoint_uri,
            spec.resume,
            restarted=_reconstructed(),
        )


def remote_shard(cfg: JobConfig, name: str | None = None) -> Any:
    """`name`: register the shard under it, so replicas and the averager can be given names.

    Shards pinned to PS nodes by `shard_resources` are spread over all of them (Ray's SPREAD
    strategy): the slices are of near-equal size, so every PS node's NIC and cores carry an
    equal share. Ray's default would fill one node first. Unpinned shards are placed as Ray
    likes, beside the driver on one node."""
    return ray.remote(ShardActor).options(
        name=name,
        num_cpus=cfg.placement.shard_cpus,
        max_restarts=cfg.placement.max_shard_restarts,
        max_task_retries=0,
        resources=cfg.placement.shard_resources,
        scheduling_strategy="SPREAD" if cfg.placement.shard_resources else "DEFAULT",
    )


def remote_replica(cfg: JobConfig, resources: dict[str, float] | None = None) -> Any:
    return ray.remote(ReplicaActor).options(
        num_cpus=cfg.placement.replica_cpus,
        num_gpus=cfg.placement.replica_gpus,
        max_restarts=cfg.placement.max_replica_restarts,
        max_task_retries=0,
        resources=cfg.placement.replica_resources if resources is None else resources,
    )


def remote_averager(cfg: JobConfig) -> Any:
    return ray.remote(AveragerActor).options(
        num_cpus=cfg.placement.averager_cpus,
        max_restarts=2,
        max_task_retries=0,
        max_concurrency=4,
        resources=cfg.placement.shard_resources,
    )
