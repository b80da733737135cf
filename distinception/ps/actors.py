"""The Ray shell around the plain shard, replica and averager cores.

This is the only module that turns classes into actors. The data plane is replica <-> shard and
averager <-> shard, directly: the driver never handles weights or gradients while training.

Wire protocol of a shard:
- `pull()` -> (version, incarnation, [ref]): the weights of `version` as one object-store ref,
  put at most once per version and cached, so any number of pulls of one version cost one copy.
  The ref is wrapped in a list so the caller decides when to fetch it.
- `push(grad, base_version, examples, fingerprint, incarnation)` -> a `PushResult` as a dict.
The incarnation changes whenever a shard actor is restarted (and reloads its checkpoint), so a
gradient computed on weights of a previous incarnation is refused rather than misapplied.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from distinception.config import JobConfig
from distinception.ps import checkpoint as ckpt
from distinception.ps.averager import AveragerCore
from distinception.ps.layout import ParamLayout
from distinception.ps.policies import StalenessPolicy
from distinception.ps.replica import BatchPrefetcher, ReplicaCore, from_wire, straggle, to_wire
from distinception.ps.shard import ShardCore

#: A pull or push that takes longer than this is treated as a failure of that shard.
RPC_TIMEOUT_S = 120.0


def _threads(cpus: float) -> None:
    torch.set_num_threads(max(1, int(cpus)))


def _reconstructed() -> bool:
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class ShardActor:
    def __init__(
        self,
        index: int,
        start: int,
        stop: int,
        layout: ParamLayout,
        init: list[ray.ObjectRef],
        cfg: JobConfig,
        examples_per_epoch: int,
        checkpoint_uri: str,
        resume: bool,
    ) -> None:
        torch.set_num_threads(1)
        values = ray.get(init[0])
        self.core = ShardCore(index, start, stop, layout, values, cfg.ps, examples_per_epoch)
        self.core.incarnation = uuid.uuid4().hex[:12]
        self.dtype = cfg.ps.transfer_dtype
        self.checkpoint_uri = checkpoint_uri
        self.restored_from = -1
        self.restarts = 1 if _reconstructed() else 0
        if (resume or self.restarts) and checkpoint_uri and ckpt.exists(checkpoint_uri):
            self.core.load_state_dict(ckpt.load_state(checkpoint_uri))
            self.restored_from = self.core.version
        self._published: tuple[int, ray.ObjectRef] | None = None

    def ready(self) -> dict[str, Any]:
        return {
            "index": self.core.index,
            "version": self.core.version,
            "incarnation": self.core.incarnation,
            "restored_from": self.restored_from,
            "restarts": self.restarts,
        }

    def pull(self) -> tuple[int, str, list[ray.ObjectRef]]:
        version = self.core.version
        if self._published is None or self._published[0] != version:
            # Dropping the previous ref lets the object store free that version once no
            # replica still holds it, which keeps object-store memory flat over a long run.
            self._published = (version, ray.put(to_wire(self.core.flat, self.dtype)))
        return version, self.core.incarnation, [self._published[1]]

    def push(
        self,
        grad: np.ndarray,
        base_version: int,
        examples: int,
        fingerprint: str,
        incarnation: str,
    ) -> dict[str, Any]:
        result = self.core.apply(
            from_wire(grad, widen=False),
            base_version,
            examples=examples,
            fingerprint=fingerprint,
            incarnation=incarnation,
        )
        return dataclasses.asdict(result)

    def stats(self) -> dict[str, Any]:
        return self.core.stats() | {"restarts": self.restarts}

    def save(self) -> int:
        """Checkpoint weights, optimizer and scheduler state, version; returns the version."""
        if self.checkpoint_uri:
            ckpt.save_state(self.checkpoint_uri, self.core.state_dict())
        return self.core.version


class ReplicaActor:
    """A replica's loop, with DistBelief's overlap of fetching, computing and pushing.

    Three things run at once: the main thread computes; a data thread decodes the next batch
    (`BatchPrefetcher`); a communication thread serialises and sends each gradient to the shards
    and then asks them for the weights that gradient produced. The main thread loads those
    weights at the next step boundary if they have arrived; under the `none` and `scale` policies
    it may compute one step on the weights it already has rather than wait (alone, a replica's
    gradients are then 1-2 versions stale), under `bound:k` it always waits, so bounds stay exact.
    Each gradient is a copy tagged with the versions of the weights it was computed on.
    """

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
    ) -> None:
        _threads(cfg.ps.replica_cpus)
        self.index = index
        self.cfg = cfg
        self.shards = shards
        self.ranges = ranges
        self.restarted = _reconstructed()
        device = "cuda" if cfg.ps.replica_gpus > 0 and torch.cuda.is_available() else "cpu"
        self._stream_args = (data_path, num_consumers)
        self.data = BatchPrefetcher(self._open_stream(position), pin=device == "cuda")
        self.core = ReplicaCore(cfg, num_classes, self.data, device=device)
        self.fingerprint = self.core.layout.fingerprint
        self.versions = [0] * len(shards)
        self.incarnations = [""] * len(shards)
        self.step = 0
        self.max_lag = 0 if StalenessPolicy.parse(cfg.ps.staleness).kind == "bound" else 1
        self.lag = 0
        self.straggler = cfg.ps.straggler_factor if index == 0 else 1.0
        self.pending_pulls: deque[Future] = deque()
        self.comm = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-comm")
        self.in_flight: list[ray.ObjectRef] = []
        self.lock = threading.Lock()
        self.counters: Counter[str] = Counter()

    def ready(self) -> dict[str, Any]:
        """Answers once the actor is placed and built; says on which node."""
        return {"index": self.index, "node_id": ray.get_runtime_context().get_node_id()}

    def _count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counters[key] += n

    # -- communication -------------------------------------------------------------------
    def _issue_pull(self) -> list[ray.ObjectRef]:
        return [s.pull.remote() for s in self.shards]

    def _finish_pull(self, refs: list[ray.ObjectRef]) -> None:
        for attempt in range(60):
            try:
                metas = ray.get(refs, timeout=RPC_TIMEOUT_S)
                arrays = ray.get([m[2][0] for m in metas], timeout=RPC_TIMEOUT_S)
                break
            except (RayActorError, GetTimeoutError, RayError):
                # A shard is restarting: count it and pull again once it is back.
                self._count("pull_failed")
                time.sleep(min(2.0, 0.2 * (attempt + 1)))
                refs = self._issue_pull()
        else:
            raise RuntimeError(f"replica {self.index}: shards unreachable for 60 pull attempts")
        for s, ((version, incarnation, _), values) in enumerate(zip(metas, arrays, strict=True)):
            start, stop = self.ranges[s]
            self.core.load_slice(start, stop, from_wire(values, widen=False))
            self.versions[s] = version
            self.incarnations[s] = incarnation
        self._count("pulls")

    def _refs(self, future: Future, timeout: float) -> list[ray.ObjectRef] | None:
        """The refs of a pull queued behind one of our pushes (None if sending it failed)."""
        try:
            return future.result(timeout=timeout)
        except RayError:
            self._count("push_lost")
            return None

    def _arrived(self, future: Future) -> bool:
        if not future.done():
            return False
        refs = self._refs(future, 0)
        return bool(refs) and len(ray.wait(refs, num_returns=len(refs), timeout=0)[0]) == len(refs)

    def _refresh(self) -> None:
        """Load the newest weights that have arrived; wait for the oldest pull in flight only
        when no more steps on the current weights are allowed."""
        pending = self.pending_pulls
        if not pending:
            self._finish_pull(self._issue_pull())
            self.lag = 0
            return
        for i in range(len(pending) - 1, -1, -1):
            if self._arrived(pending[i]):
                refs = self._refs(pending[i], 0)
                for _ in range(i + 1):
                    pending.popleft()
                self._finish_pull(refs if refs else self._issue_pull())
                self.lag = 0
                return
        if self.lag < self.max_lag:
            self.lag += 1
            return
        refs = self._refs(pending.popleft(), RPC_TIMEOUT_S)
        self._finish_pull(refs if refs else self._issue_pull())
        self.lag = 0

    def _collect(self, keep: int) -> None:
        """Collect finished pushes, waiting only while more than `keep` are in flight."""
        if not self.in_flight:
            return
        need = len(self.in_flight) - keep
        if need > 0:
            ready, self.in_flight = ray.wait(
                self.in_flight, num_returns=need, timeout=RPC_TIMEOUT_S
            )
        else:
            ready, self.in_flight = ray.wait(
                self.in_flight, num_returns=len(self.in_flight), timeout=0
            )
        for ref in ready:
            try:
                result = ray.get(ref)
            except RayError:
                self._count("push_lost")
                continue
            if result["accepted"]:
                self._count("accepted")
                self._count("staleness_sum", result["staleness"])
            else:
                self._count(f"refused_{result['reason']}")

    def _send(
        self,
        grad: torch.Tensor,
        landed: Callable[[], None],
        versions: list[int],
        incarnations: list[str],
        examples: int,
        pull: bool,
    ) -> list[ray.ObjectRef] | None:
        """On the communication thread: push every shard its slice, then (if asked) pull.

        `landed` waits for the gradient's copy off the GPU, here rather than on the compute
        thread, which meanwhile queues the next step."""
        landed()
        for s, shard in enumerate(self.shards):
            start, stop = self.ranges[s]
            self.in_flight.append(
                shard.push.remote(
                    to_wire(grad[start:stop], self.cfg.ps.transfer_dtype),
                    versions[s],
                    examples,
                    self.fingerprint,
                    incarnations[s],
                )
            )
        self._count("pushes")
        # Issued after our push, so each shard applies our gradient before answering.
        refs = self._issue_pull() if pull else None
        # Bounded in-flight pushes: a fast replica cannot flood a slow shard's queue.
        self._collect(keep=2 * len(self.shards))
        return refs

    def _push(self, pull: bool) -> None:
        grad, examples, landed = self.core.take_gradient()  # a copy: the next step may start
        future = self.comm.submit(
            self._send, grad, landed, list(self.versions), list(self.incarnations), examples, pull
        )
        if pull:
            self.pending_pulls.append(future)
            if len(self.pending_pulls) > 2:
                self.pending_pulls.popleft()  # superseded by the two newer ones

    # -- the loop --------------------------------------------------------------------------
    def train(self, steps: int) -> dict[str, Any]:
        """Run `steps` batches; return what happened, for the coordinator's bookkeeping."""
        cfg = self.cfg.ps
        t0 = time.perf_counter()
        timings: Counter[str] = Counter()
        losses: list[torch.Tensor] = []
        examples = 0
        for _ in range(steps):
            if self.step % cfg.n_fetch == 0 or self.pending_pulls:
                t = time.perf_counter()
                self._refresh()
                timings["pull_wait_s"] += time.perf_counter() - t
            t = time.perf_counter()
            batch = self.core.next_batch()
            timings["data_s"] += time.perf_counter() - t
            t = time.perf_counter()
            losses.append(self.core.compute(batch, self.data.rng, self.data.request))
            compute_s = time.perf_counter() - t
            timings["compute_s"] += compute_s
            straggle(self.straggler, compute_s)
            examples += int(batch[1].shape[0])
            self.step += 1
            if self.step % cfg.n_push == 0:
                t = time.perf_counter()
                self._push(pull=self.step % cfg.n_fetch == 0)
                timings["push_s"] += time.perf_counter() - t
        # Read once per call, not per step: a GPU keeps its queue of kernels meanwhile.
        values = torch.stack(losses).float().cpu().numpy() if losses else np.zeros(0)
        finite = values[np.isfinite(values)]
        with self.lock:
            counters = dict(self.counters)
        return {
            "index": self.index,
            "steps": steps,
            "examples": examples,
            "loss": float(finite.mean()) if finite.size else float("nan"),
            "wall_s": time.perf_counter() - t0,
            "timings": dict(timings),
            "counters": counters,
            "skipped": self.data.skipped,
            "position": self.data.position,
            "restarted": self.restarted,
        }

    def _open_stream(self, position: dict | None) -> Any:
        from distinception.data.loader import TrainStream

        path, n = self._stream_args
        return TrainStream(
            path,
            consumer=self.index,
            num_consumers=n,
            batch_size=self.cfg.data.batch_size,
            recipe=self.cfg.recipe,
            input_size=self.cfg.model.input_size,
            seed=self.cfg.run.seed,
            position=position,
        )

    def seek(self, position: dict) -> None:
        """Continue from a recorded data position (after a restart of this actor)."""
        self.data.close()
        self.data = BatchPrefetcher(
            self._open_stream(position), pin=self.core.device.type == "cuda"
        )
        self.core.batches = self.data
        self.restarted = False


class AveragerActor:
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
        self.cfg = cfg
        self.data_path = data_path
        self.shards = shards
        self.ranges = ranges
        self.core = AveragerCore(cfg, num_classes)
        self.checkpoint_uri = checkpoint_uri
        self.restarts = 1 if _reconstructed() else 0
        if (resume or self.restarts) and checkpoint_uri and ckpt.exists(checkpoint_uri):
            self.core.load_state_dict(ckpt.load_state(checkpoint_uri))
        self.lock = threading.Lock()
        self.running = False
        self.thread: threading.Thread | None = None
        self.errors = 0
        if self.restarts:
            self.start()  # a restarted averager resumes sampling on its own

    def _sample(self) -> bool:
        metas = ray.get([s.pull.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        arrays = ray.get([m[2][0] for m in metas], timeout=RPC_TIMEOUT_S)
        values = torch.cat([from_wire(a) for a in arrays])
        version = sum(m[0] for m in metas) // len(metas)
        with self.lock:
            return self.core.observe(version, values)

    def _loop(self) -> None:
        while self.running:
            try:
                self._sample()
            except RayError:
                self.errors += 1
            time.sleep(self.cfg.ps.averager_interval_s)

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
        except RayError:
            self.errors += 1
        return {"version": self.core.version, "samples": self.core.samples}

    def _val(self):
        return val_batches(self.cfg, self.data_path)

    def _bn(self):
        return bn_batches(self.cfg, self.data_path)

    def evaluate(self) -> dict[str, Any]:
        with self.lock:
            return self.core.evaluate(self._val, self._bn) | {"sampler_errors": self.errors}

    def inference_state(self) -> dict[str, torch.Tensor]:
        with self.lock:
            model = self.core.inference_model(self._bn)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def save(self) -> int:
        with self.lock:
            if self.checkpoint_uri:
                ckpt.save_state(self.checkpoint_uri, self.core.state_dict())
            return self.core.version


def val_batches(cfg: JobConfig, data_path: str):
    """The validation images every evaluation scores (center crop, `data.val_limit`)."""
    from distinception.data.loader import eval_batches

    return eval_batches(
        data_path,
        split="val",
        input_size=cfg.model.input_size,
        batch_size=cfg.data.eval_batch_size,
        scheme="center",
        limit=cfg.data.val_limit,
    )


def bn_batches(cfg: JobConfig, data_path: str):
    """Training images (center crop) that BatchNorm statistics are recomputed on."""
    from distinception.data.loader import eval_batches

    batches = eval_batches(
        data_path,
        split="train",
        input_size=cfg.model.input_size,
        batch_size=cfg.data.eval_batch_size,
        scheme="center",
        limit=max(256, 4 * cfg.data.eval_batch_size),
    )
    return (views[:, 0] for views, _ in batches)


def remote_shard(cfg: JobConfig) -> Any:
    return ray.remote(ShardActor).options(
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
