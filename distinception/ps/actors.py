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
- Same node (`ps.transport=auto`): a replica reads the weights from the shard's shared-memory
  file instead of pulling, and pushes by writing its gradient into a shared-memory slot and
  ringing the shard's doorbell with `push`'s arguments, the slot's path in place of the gradient
  (`push_shared` takes the same request as a Ray call). See `transport.shm`.

Constructor arguments stay small and by value, so a restart never depends on an object that may
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
from distinception.ps.layout import ParamLayout
from distinception.ps.replica_loop import ReplicaLoop, train_stream
from distinception.ps.shard_server import ShardServer
from distinception.ps.transport import RPC_TIMEOUT_S
from distinception.ps.transport.objstore import Publication, ShardLinks

__all__ = ["RPC_TIMEOUT_S", "remote_averager", "remote_replica", "remote_shard"]


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
        `run.model_seed` instead (the coordinator's way)."""
        torch.set_num_threads(1)
        super().__init__(
            index,
            start,
            stop,
            layout,
            None if init is None else ray.get(init[0]),
            cfg,
            examples_per_epoch,
            checkpoint_uri,
            resume,
            shm_dir=shm_dir,
            num_classes=num_classes,
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
        slowdown: float = 1.0,
    ) -> None:
        _threads(cfg.ps.replica_cpus)
        super().__init__(
            index,
            cfg,
            num_classes,
            train_stream(cfg, data_path, index, num_consumers),
            _connect(shards, ranges, cfg.ps.transport),
            position=position,
            restarted=_reconstructed(),
            slowdown=slowdown,
        )

    def ready(self) -> dict[str, Any]:
        """Answers once the actor is placed and built; says on which node."""
        return {"index": self.index, "node_id": _node_id()}


class AveragerActor(AveragerLoop):
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
        super().__init__(
            cfg,
            data_path,
            num_classes,
            _connect(shards, ranges, cfg.ps.transport),
            checkpoint_uri,
            resume,
            restarted=_reconstructed(),
        )


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
