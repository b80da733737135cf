"""A shard as its peers see it: the plain core behind the shard's actor.

`ShardCore` is the update rule; this adds what a running shard answers: how to reach it
(`attach`), pushes by value or from a same-node replica's gradient slot (a Ray call or a
doorbell), statistics, checkpoints, and the restart bookkeeping. No Ray here: the actor shell
adds the pull through the object store and the facts only Ray knows (node, restart, initial
slice in the object store).

The incarnation changes whenever a shard is restarted (and reloads its checkpoint), so a
gradient computed on weights of a previous incarnation is refused rather than misapplied.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from typing import Any

import numpy as np
import torch

from distinception.config import JobConfig
from distinception.ps import checkpoint as ckpt
from distinception.ps.layout import ParamLayout
from distinception.ps.replica import build_flat_model
from distinception.ps.shard import ShardCore
from distinception.ps.transport import shm
from distinception.ps.transport.wire import PushRequest, from_wire


class ShardServer:
    """Same-node replicas read its weights from shared memory and ring its doorbell to push
    (see `shm`); others push by calls. Both paths, and every other method, go through one lock
    around the core, as the doorbell answers on its own threads."""

    def __init__(
        self,
        index: int,
        start: int,
        stop: int,
        layout: ParamLayout,
        values: np.ndarray | torch.Tensor | None,
        cfg: JobConfig,
        examples_per_epoch: int,
        checkpoint_uri: str,
        resume: bool,
        shm_dir: str = "",
        num_classes: int = 0,
        node_id: str = "",
        restarted: bool = False,
    ) -> None:
        """`values`: the initial slice; None builds the model from `run.model_seed` here
        instead (weights are identical everywhere, and a restart never depends on an object
        that may have gone out of scope). `restarted`: this is a new life of a shard that
        failed, which resumes from its checkpoint whether or not the job was resumed."""
        if values is None:
            _, flat, _, _ = build_flat_model(cfg.model, num_classes, seed=cfg.run.model_seed)
            values = flat[start:stop].clone()
        incarnation = uuid.uuid4().hex[:12]
        self.mutex = threading.Lock()
        self.node_id = node_id
        self.total = layout.total
        self.files = shm.ShardFiles(shm_dir, index, incarnation, stop - start)
        self.core = ShardCore(
            index,
            start,
            stop,
            layout,
            values,
            cfg.ps,
            cfg.optim,
            examples_per_epoch,
            shared=self.files.weights,
        )
        self.core.incarnation = incarnation
        self.dtype = cfg.transport.transfer_dtype
        self.checkpoint_uri = checkpoint_uri
        self.restored_from = -1
        self.restarts = 1 if restarted else 0
        if (resume or self.restarts) and checkpoint_uri and ckpt.exists(checkpoint_uri):
            self.core.load_state_dict(ckpt.load_state(checkpoint_uri))
            self.restored_from = self.core.version
        self.files.listen(self._ring)

    def ready(self) -> dict[str, Any]:
        return {
            "index": self.core.index,
            "version": self.core.version,
            "incarnation": self.core.incarnation,
            "restored_from": self.restored_from,
            "restarts": self.restarts,
        }

    def attach(self) -> dict[str, Any]:
        """How to reach this shard: its node, incarnation and, if any, shared-memory file and
        doorbell."""
        shared = self.core.shared
        doorbell = self.files.doorbell
        return {
            "node_id": self.node_id,
            "incarnation": self.core.incarnation,
            "path": shared.path if shared is not None else "",
            "bell": doorbell.path if doorbell is not None else "",
            "size": self.core.size,
            "total": self.total,
        }

    def push(
        self,
        grad: np.ndarray,
        base_version: int,
        examples: int,
        fingerprint: str,
        incarnation: str,
    ) -> dict[str, Any]:
        with self.mutex:
            result = self.core.apply(
                from_wire(grad, widen=False),
                base_version,
                examples=examples,
                fingerprint=fingerprint,
                incarnation=incarnation,
            )
        return dataclasses.asdict(result)

    def push_shared(
        self,
        path: str,
        base_version: int,
        examples: int,
        fingerprint: str,
        incarnation: str,
    ) -> dict[str, Any]:
        """`push` for a same-node replica: the whole flat gradient lies in the shared-memory
        file `path` (one of the replica's slots in this job's directory); this shard reads its
        slice from there. A path outside the directory or a file that cannot be mapped is
        refused as "source"; a file of the wrong size as "length"."""
        with self.mutex:
            grad = self.files.gradient(path)
            if grad is None:
                result = self.core.refuse("source", base_version)
            else:
                result = self.core.apply(
                    grad[self.core.start : self.core.stop],
                    base_version,
                    examples=examples,
                    fingerprint=fingerprint,
                    incarnation=incarnation,
                    borrow=True,
                )
        return dataclasses.asdict(result)

    def _ring(self, message: dict[str, Any]) -> dict[str, Any]:
        """A doorbell request: `push_shared`'s arguments by name. A malformed one (not from a
        replica of ours) is refused as "source"."""
        request = PushRequest.parse(message)
        if request is None:
            with self.mutex:
                return dataclasses.asdict(self.core.refuse("source", self.core.version))
        return self.push_shared(*request)

    def release(self) -> bool:
        """At the end of the job: unmap everything and remove this job's shared-memory files."""
        self.files.hang_up()
        with self.mutex:
            self.files.unmap_gradients()
        shm.remove(self.files.directory)
        return True

    def stats(self) -> dict[str, Any]:
        with self.mutex:
            return self.core.stats() | {"restarts": self.restarts}

    def save(self) -> int:
        """Checkpoint weights, optimizer and scheduler state, version; returns the version."""
        if not self.checkpoint_uri:
            return self.core.version
        with self.mutex:
            state = self.core.state_dict()
        ckpt.save_state(self.checkpoint_uri, state)
        return int(state["version"])
