"""What each actor is made from: one frozen spec per actor kind.

An actor's constructor takes its spec (and, for a shard, optional initial weights), never a
long list of positional arguments: the coordinator and the benchmarks that start actors fill
in named fields, and a field added for one caller cannot shift another's arguments. A spec
holds values only (names, ranges, paths), so Ray can restart an actor from it without any
object that may have left the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distinception.config import JobConfig
from distinception.ps.layout import ParamLayout


@dataclass(frozen=True)
class ShardSpec:
    """One shard: its slice [start, stop) of the flat vector, and where it keeps it."""

    index: int
    start: int
    stop: int
    layout: ParamLayout
    cfg: JobConfig
    examples_per_epoch: int
    checkpoint_uri: str = ""
    resume: bool = False
    shm_dir: str = ""  # the job's shared-memory directory ("" = object store only)
    num_classes: int = 0


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica: its share of the data and the shards it talks to."""

    index: int
    cfg: JobConfig
    data_path: str
    num_classes: int
    shards: tuple[Any, ...]  # the shards' registered names (or handles, in benchmarks)
    ranges: tuple[tuple[int, int], ...]
    num_consumers: int  # replicas sharing the data: this one reads share `index` of them
    position: dict | None = None  # a recorded data position to continue from
    slowdown: float = 1.0  # a benchmark's straggler: each step takes this many times its compute


@dataclass(frozen=True)
class AveragerSpec:
    """The averager: the shards it samples, and the data it evaluates on."""

    cfg: JobConfig
    data_path: str
    num_classes: int
    shards: tuple[Any, ...]
    ranges: tuple[tuple[int, int], ...]
    checkpoint_uri: str = ""
    resume: bool = False


__all__ = ["AveragerSpec", "ReplicaSpec", "ShardSpec"]
