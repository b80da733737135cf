"""Polyak-averaged inference weights, kept off the replicas' path.

The averager samples the published weights on its own clock and folds them into
`torch.optim.swa_utils.AveragedModel`: a uniform (Polyak) average from `polyak_start` updates on,
or an exponential moving average. The EMA's decay counts updates, not samples: a sample taken k
updates after the previous one weighs the average by `ema_decay ** k`, so its horizon is the same
number of updates on a fast machine and a slow one, with 2 replicas or 8, whatever the sampling
interval (a decay per sample would make it a span of seconds). BatchNorm statistics of an
average of weights are not the average of statistics, so for the BN variant they are recomputed
(`update_bn`) on training images before every evaluation, for the raw weights too (replicas'
running stats never leave them).

`AveragerCore` is the averaging; `AveragerLoop` samples the shards through a `ShardChannel` on a
thread of its own, plain Python that the Ray shell (`actors.AveragerActor`) wraps.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, update_bn

from distinception.config import AveragerConfig, JobConfig, ModelConfig
from distinception.metrics import evaluate_model
from distinception.ps import checkpoint as ckpt
from distinception.ps.replica import build_flat_model
from distinception.ps.transport import RPC_TIMEOUT_S, ShardChannel


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Snapshot:
    """The averager's weights at one version, detached from the averaging that goes on."""

    def __init__(
        self, version: int, samples: int, raw: torch.nn.Module, polyak: torch.nn.Module
    ) -> None:
        self.version = version
        self.samples = samples
        self.raw = raw
        self.polyak = polyak

    def evaluate(
        self,
        val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        bn_batches: Callable[[], Iterable[torch.Tensor]] | None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "polyak_samples": self.samples}
        for tag, scored in (("raw", self.raw), ("polyak", self.polyak)):
            if bn_batches is not None and has_batchnorm(scored):
                update_bn(bn_batches(), scored)
            res = evaluate_model(scored, val_batches())
            out[f"{tag}_top1_error"] = res["top1_error"]
            out[f"{tag}_top5_error"] = res["top5_error"]
            out["val_images"] = res["images"]
        return out

    def inference_model(
        self, bn_batches: Callable[[], Iterable[torch.Tensor]] | None
    ) -> torch.nn.Module:
        module = self.polyak
        if bn_batches is not None and has_batchnorm(module):
            update_bn(bn_batches(), module)
        # Parameters of a copy of the raw model are views of a flat buffer; give them their own
        # storage so the saved model is ordinary.
        with torch.no_grad():
            for p in module.parameters():
                p.data = p.data.clone()
        return module.eval()


class AveragerCore:
    """The Polyak average of the weights the shards publish, on its own section of the job
    (`averager`) and the model it averages."""

    def __init__(self, model: ModelConfig, averager: AveragerConfig, num_classes: int) -> None:
        self.averager = averager
        self.model, self.flat, _, self.layout = build_flat_model(model, num_classes)
        self.model.eval()
        if averager.polyak == "ema":
            self.averaged = AveragedModel(self.model, multi_avg_fn=self._ema_step)
        else:
            self.averaged = AveragedModel(self.model)
        self.version = -1
        self.samples = 0
        self._weight = 1.0  # the new sample's share in the next EMA step

    def _ema_step(
        self, averaged: list[torch.Tensor], current: list[torch.Tensor], _num_averaged: Any
    ) -> None:
        with torch.no_grad():
            for avg, cur in zip(averaged, current, strict=True):
                avg.lerp_(cur, self._weight)

    def observe(self, version: int, values: torch.Tensor) -> bool:
        """Take weights of a new (mean shard) `version`; fold them in once past the start."""
        if version == self.version:
            return False
        with torch.no_grad():
            self.flat.copy_(values)
        # A shard restored from its checkpoint may publish an older version: count one update.
        updates = max(version - self.version, 1) if self.version >= 0 else 1
        self._weight = 1.0 - self.averager.ema_decay**updates
        self.version = version
        if self.averager.polyak != "off" and version >= self.averager.polyak_start:
            self.averaged.update_parameters(self.model)
            self.samples += 1
        return True

    def averaged_module(self) -> torch.nn.Module:
        """The inference model: averaged weights, or raw ones before any sample was taken."""
        if self.samples == 0:
            return self.model
        return self.averaged.module

    def snapshot(self) -> Snapshot:
        """Copies of the raw and averaged weights as they are now, to score while sampling goes
        on: an evaluation takes seconds, and a sampler held back for them would fold a long
        stretch of updates in as one step of its last weights."""
        return Snapshot(
            self.version,
            self.samples,
            copy.deepcopy(self.model),
            copy.deepcopy(self.averaged_module()),
        )

    def evaluate(
        self,
        val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        bn_batches: Callable[[], Iterable[torch.Tensor]] | None,
    ) -> dict[str, Any]:
        """Top-1/top-5 error of raw and averaged weights on the validation split."""
        return self.snapshot().evaluate(val_batches, bn_batches)

    def inference_model(
        self, bn_batches: Callable[[], Iterable[torch.Tensor]] | None
    ) -> torch.nn.Module:
        """A standalone copy of the averaged model, BN statistics recomputed, in eval mode."""
        return self.snapshot().inference_model(bn_batches)

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged": self.averaged.state_dict(),
            "version": self.version,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.version = int(state["version"])
        self.samples = int(state["samples"])


class AveragerLoop:
    """Samples the shards' weights every `averager.interval_s` on its own thread, and answers
    evaluations and checkpoints beside it (one lock around the core).

    `connect(count)` makes the channel to the shards. `restarted`: this is a new life of an
    averager that failed; it reloads its checkpoint and resumes sampling on its own."""

    def __init__(
        self,
        cfg: JobConfig,
        data_path: str,
        num_classes: int,
        connect: Callable[[Callable[[str], None]], ShardChannel],
        checkpoint_uri: str,
        resume: bool,
        restarted: bool = False,
    ) -> None:
        # The data path (torchvision) is imported here, when the averager is built, and not with
        # this module: a shard's process imports the module and never reads an image, and an
        # import at the first evaluation would land inside the run's clock.
        from distinception.data.loader import bn_batches, val_batches

        self.cfg = cfg
        self._val: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]] = functools.partial(
            val_batches, cfg, data_path
        )
        self._bn: Callable[[], Iterable[torch.Tensor]] = functools.partial(
            bn_batches, cfg, data_path
        )
        self.core = AveragerCore(cfg.model, cfg.averager, num_classes)
        self.total = self.core.layout.total
        self.counters: Counter[str] = Counter()
        self.links = connect(self._count)
        self.checkpoint_uri = checkpoint_uri
        self.restarts = 1 if restarted else 0
        if (resume or self.restarts) and checkpoint_uri and ckpt.exists(checkpoint_uri):
            self.core.load_state_dict(ckpt.load_state(checkpoint_uri))
        self.lock = threading.Lock()
        #: Snapshots held to score after training (`run.eval_scoring: after`), by request key.
        self.held: dict[int, Snapshot] = {}
        self.running = False
        self.thread: threading.Thread | None = None
        self.errors = 0
        if self.restarts:
            self.start()

    def _count(self, key: str) -> None:
        self.counters[key] += 1

    def _sample(self) -> bool:
        values = torch.empty(self.total)
        self.links.finish(self.links.issue(), lambda a, b, v: values[a:b].copy_(v), attempts=1)
        version = sum(self.links.versions) // len(self.links.versions)
        with self.lock:
            return self.core.observe(version, values)

    def _loop(self) -> None:
        while self.running:
            try:
                self._sample()
            except self.links.errors:
                self.errors += 1
            time.sleep(self.cfg.averager.interval_s)

    def start(self) -> bool:
        if not self.running:
            self.running = True
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return True

    def stop(self) -> dict[str, Any]:
        """Stop sampling, then take one last sample so the average includes the final weights."""
        self.running = False
        if self.thread is not None:
            self.thread.join(timeout=RPC_TIMEOUT_S)
        try:
            self._sample()
        except self.links.errors:
            self.errors += 1
        return {"version": self.core.version, "samples": self.core.samples}

    def evaluate(self) -> dict[str, Any]:
        # Scored outside the lock, so the sampler keeps its pace through the evaluation.
        with self.lock:
            snapshot = self.core.snapshot()
        return snapshot.evaluate(self._val, self._bn) | {"sampler_errors": self.errors}

    def hold(self, key: int) -> int:
        """Keep the weights as they are now under `key`, to score after training
        (`score_held`): copying them takes milliseconds, scoring them seconds."""
        with self.lock:
            self.held[key] = self.core.snapshot()
        return key

    def score_held(self) -> dict[int, dict[str, Any]]:
        """Score every held snapshot, and let them go. A restarted averager has lost what its
        earlier life held; the keys it lacks are the caller's to count."""
        held, self.held = self.held, {}
        return {key: snap.evaluate(self._val, self._bn) for key, snap in sorted(held.items())}

    def inference_state(self) -> dict[str, torch.Tensor]:
        with self.lock:
            snapshot = self.core.snapshot()
        model = snapshot.inference_model(self._bn)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save(self) -> int:
        with self.lock:
            if self.checkpoint_uri:
                ckpt.save_state(self.checkpoint_uri, self.core.state_dict())
            return self.core.version
