"""A job's checkpoint: the shards' and averager's files, and `progress.json` that ties them.

Shards and the averager write their own state (they hold it; the driver never sees weights).
What only the driver knows, the examples trained on, each replica's data position, the run id,
the training seconds and the faults so far, goes into `progress.json`, written last so it never
points at state newer than what was saved. Reading and writing it live here, together, so the
format has one home; `--resume` reads it before any actor starts.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from distinception.config import ConfigError, JobConfig, from_dict
from distinception.ps import checkpoint as ckpt
from distinception.ps.actors import RPC_TIMEOUT_S
from distinception.ps.callbacks import Callback

if TYPE_CHECKING:
    from distinception.ps.control.replicas import ReplicaScheduler

log = logging.getLogger(__name__)

PROGRESS = "progress.json"


def checkpoint_uri(directory: str, name: str) -> str:
    """Where file `name` of a job's checkpoint lives ("" when the job keeps none)."""
    return ckpt.join(directory, name) if directory else ""


@dataclass
class Progress:
    """What `progress.json` gives a resumed job: where it stopped and what it had survived."""

    examples: int
    positions: dict[int, dict]
    run_id: str | None
    seconds: float
    faults: dict[str, int]


def read_progress(directory: str) -> Progress:
    """The progress of the job checkpointed in `directory`."""
    progress = ckpt.load_json(checkpoint_uri(directory, PROGRESS))
    return Progress(
        examples=int(progress["examples"]),
        positions={int(k): v for k, v in progress["positions"].items()},
        run_id=progress.get("run_id"),
        seconds=float(progress.get("seconds", 0.0)),
        faults=progress.get("faults", {}),
    )


def load_progress_config(checkpoint_dir: str) -> JobConfig:
    """The config a checkpointed job ran with, for `--resume`."""
    uri = ckpt.join(checkpoint_dir, PROGRESS)
    if not ckpt.exists(uri):
        raise ConfigError(
            f"--resume={checkpoint_dir!r}: expected a checkpoint directory holding progress.json"
        )
    progress = ckpt.load_json(uri)
    if not isinstance(progress.get("config"), dict):
        raise ConfigError(f"--resume={checkpoint_dir!r}: progress.json holds no job config")
    cfg = from_dict(progress["config"])
    names = [f"shard-{i}.pt" for i in range(cfg.ps.num_shards)] + ["averager.pt"]
    ckpt.check_loadable(checkpoint_dir, names)
    return cfg


class Checkpointer:
    """Checkpoints the job every `run.checkpoint_interval_s` (never when it has no directory).

    A failed checkpoint is counted and skipped, never fatal: the previous one stays whole, and
    the next comes on the clock."""

    def __init__(
        self,
        cfg: JobConfig,
        directory: str,
        shards: list[Any],
        averager: Any,
        replicas: ReplicaScheduler,
        faults: Counter[str],
        callbacks: Callback,
        *,
        run_id: str | None,
        started: float,
    ) -> None:
        self.cfg = cfg
        self.directory = directory
        self.shards = shards
        self.averager = averager
        self.replicas = replicas
        self.faults = faults
        self.callbacks = callbacks
        self.run_id = run_id
        self.interval_s = cfg.run.checkpoint_interval_s
        self.last_at = started

    def tick(self, now: float, seconds: float) -> None:
        """Checkpoint when one is due; `seconds` is the job's training time so far."""
        if self.directory and now - self.last_at >= self.interval_s:
            self.save(seconds)
            self.last_at = now

    def save(self, seconds: float) -> None:
        """Shards and averager write their own files; progress.json last, so it never points at
        state newer than what was saved."""
        try:
            versions = ray.get([s.save.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
            ray.get(self.averager.save.remote(), timeout=RPC_TIMEOUT_S)
        except RayError as err:
            self.faults["checkpoint_failed"] += 1
            log.warning("checkpoint failed: %s", err)
            return
        progress = {
            "examples": self.replicas.examples,
            "positions": {str(k): v for k, v in self.replicas.positions.items()},
            "versions": versions,
            "run_id": self.run_id,
            "seconds": seconds,
            "faults": dict(self.faults),
            "config": self.cfg.to_dict(),
            "time": time.time(),
        }
        ckpt.save_json(checkpoint_uri(self.directory, PROGRESS), progress)
        self.callbacks.on_checkpoint(self.directory, progress)
