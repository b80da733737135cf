"""The coordinator: the control plane of one training job.

It starts the shards, the averager and the replicas, runs the job's loop, and stops everything
it started, however the job ends. It reports what happened through its callbacks (tracking is
one; this module never imports MLflow). It never touches weights or gradients while training:
those flow between replicas, shards and the averager directly.

The loop's jobs are parts in `ps/control/`, each with its own state and clock: scheduling the
replicas, collecting statistics, evaluating, checkpointing. The loop here only says in which
order they run, so the order, which the job's timing and fault handling depend on, is read in
one place.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import ray
import torch
from ray.exceptions import RayError, RayTaskError

from distinception.config import ConfigError, JobConfig
from distinception.data.generated import resolve_data
from distinception.ps import shm
from distinception.ps.actors import (
    RPC_TIMEOUT_S,
    remote_averager,
    remote_replica,
    remote_shard,
)
from distinception.ps.callbacks import Callback, CallbackList, TrainResult
from distinception.ps.capacity import check_fits
from distinception.ps.control.checkpoints import (
    Checkpointer,
    checkpoint_uri,
    load_progress_config,
    read_progress,
)
from distinception.ps.control.evaluation import Evaluator
from distinception.ps.control.replicas import CALL_SECONDS, ReplicaScheduler
from distinception.ps.control.stats import (
    FAULTS,
    ProgressBar,
    StatsCollector,
    fault_metrics,
    object_store_bytes,
)
from distinception.ps.elastic import ReplicaPool
from distinception.ps.replica import build_flat_model
from distinception.ps.session import ray_session
from distinception.ps.specs import AveragerSpec, ReplicaSpec, ShardSpec

__all__ = [
    "CALL_SECONDS",
    "FAULTS",
    "Coordinator",
    "load_progress_config",
    "object_store_bytes",
]


class Coordinator:
    """One training job, from starting its actors to its result (`run`)."""

    def __init__(
        self,
        cfg: JobConfig,
        callbacks: Sequence[Callback] = (),
        *,
        checkpoint_dir: str | None = None,
        resume: bool = False,
        straggler: float = 1.0,
    ) -> None:
        self.cfg = cfg
        self.straggler = straggler
        self.callbacks = CallbackList(callbacks)
        self.resume = resume
        self.checkpoint_dir = checkpoint_dir or cfg.run.checkpoint_dir
        self.faults: Counter[str] = Counter()
        self.history: list[dict[str, Any]] = []
        self.run_id: str | None = None
        self.elapsed_before = 0.0
        self.scheduler = ReplicaScheduler(cfg, self.faults, self._new_replica)
        # What the job starts, empty until it does: teardown stops whatever exists by then.
        self.data_path = ""
        self.num_classes = 0
        self.train_examples = 0
        self.layout: Any = None
        self.ranges: list[tuple[int, int]] = []
        self.shm_dir = ""
        self.shard_names: list[str] = []
        self.shards: list[Any] = []
        self.averager: Any = None

    # The scheduler's state, where a callback watching the job (tests, chaos) looks for it.
    @property
    def replicas(self) -> dict[int, Any]:
        return self.scheduler.replicas

    @property
    def positions(self) -> dict[int, dict]:
        return self.scheduler.positions

    @property
    def pool(self) -> ReplicaPool | None:
        return self.scheduler.pool

    @property
    def examples(self) -> int:
        return self.scheduler.examples

    # -- setup ---------------------------------------------------------------------------------
    def _start_shards(self, resume: bool) -> None:
        cfg = self.cfg
        _, _, _, layout = build_flat_model(cfg.model, self.num_classes, seed=cfg.run.model_seed)
        self.layout = layout
        self.ranges = layout.shard_ranges(cfg.ps.num_shards)
        # Each shard builds the same initial weights from `run.model_seed` itself: nothing in the
        # object store that a restart would depend on (Ray warns about such constructor args).
        # One directory per job for the same-node shared-memory transport (see ps/shm.py).
        self.shm_dir = shm.job_dir() if cfg.transport.channel == "auto" and shm.available() else ""
        # Shards are registered by name (unique to this job) and replicas and the averager are
        # given the names: actor handles as constructor arguments live in the object store.
        job = uuid.uuid4().hex[:12]
        self.shard_names = [f"distinception-{job}-shard-{i}" for i in range(len(self.ranges))]
        self.shards = [
            remote_shard(cfg, self.shard_names[i]).remote(
                ShardSpec(
                    index=i,
                    start=a,
                    stop=b,
                    layout=layout,
                    cfg=cfg,
                    examples_per_epoch=self.train_examples,
                    checkpoint_uri=self._ckpt_uri(f"shard-{i}.pt"),
                    resume=resume,
                    shm_dir=self.shm_dir,
                    num_classes=self.num_classes,
                )
            )
            for i, (a, b) in enumerate(self.ranges)
        ]

    def _ckpt_uri(self, name: str) -> str:
        return checkpoint_uri(self.checkpoint_dir or "", name)

    def _new_replica(self, index: int, position: dict | None) -> Any:
        return remote_replica(self.cfg).remote(
            ReplicaSpec(
                index=index,
                cfg=self.cfg,
                data_path=self.data_path,
                num_classes=self.num_classes,
                shards=tuple(self.shard_names),
                ranges=tuple(self.ranges),
                num_consumers=self.cfg.ps.num_replicas,
                position=position,
                slowdown=self.straggler if index == 0 else 1.0,
            )
        )

    def _load_progress(self) -> None:
        progress = read_progress(self.checkpoint_dir or "")
        self.scheduler.examples = progress.examples
        self.scheduler.positions = progress.positions
        self.run_id = progress.run_id
        self.elapsed_before = progress.seconds
        self.faults.update(progress.faults)

    def _start(self) -> None:
        """Start the shards, the averager (from the checkpoint when resuming) and the first
        replicas; tell the callbacks what the job is.

        Every actor is created before any is waited for, and the callbacks are told while they
        are built: each actor spends its first seconds importing torch and building its model,
        and one after another that was most of a short job. The replicas get no call until
        `_run` starts the clock."""
        cfg = self.cfg
        self.data_path, self.num_classes, self.train_examples = resolve_data(cfg)
        if self.resume:
            self._load_progress()
        self._start_shards(self.resume)
        self.averager = remote_averager(cfg).remote(
            AveragerSpec(
                cfg=cfg,
                data_path=self.data_path,
                num_classes=self.num_classes,
                shards=tuple(self.shard_names),
                ranges=tuple(self.ranges),
                checkpoint_uri=self._ckpt_uri("averager.pt"),
                resume=self.resume,
            )
        )
        self.scheduler.start()
        info = {
            "params": self.layout.total,
            "num_classes": self.num_classes,
            "train_examples": self.train_examples,
            "data_path": self.data_path,
            "ranges": self.ranges,
            "resumed_from_examples": self.examples,
            "run_id": self.run_id,
        }
        self.run_id = self.callbacks.on_start(cfg, info) or self.run_id
        ray.get(
            [s.ready.remote() for s in self.shards] + [self.averager.start.remote()],
            timeout=RPC_TIMEOUT_S,
        )

    # -- the loop ------------------------------------------------------------------------------
    def run(self, address: str | None = None) -> TrainResult:
        with ray_session(address) as started_ray:
            try:
                check_fits(self.cfg, local=started_ray)
                return self._run()
            except BaseException as err:
                # A user mistake found inside an actor (bad data) reaches the caller as itself,
                # one line, not wrapped in the remote traceback.
                cause = err.cause if isinstance(err, RayTaskError) else None
                if isinstance(cause, ConfigError):
                    self.callbacks.on_failure(cause)
                    raise cause from None
                self.callbacks.on_failure(err)
                raise
            finally:
                self._teardown()

    def _run(self) -> TrainResult:
        cfg = self.cfg
        self._start()
        budget = cfg.run.example_budget(self.train_examples) or 2**62
        replicas = self.scheduler
        replicas.wait_built()
        replicas.begin()
        t_start = time.perf_counter()
        evaluator, checkpointer, stats = self._clocked_parts(t_start)
        progress = ProgressBar(cfg.run.progress, budget, self.examples)
        while replicas.running:
            ready = replicas.wait(0.5)
            now = time.perf_counter()
            for call in replicas.collect(ready):
                stats.record(call)
                progress.update(call["examples"])
            elapsed = self.elapsed_before + (now - t_start)
            replicas.end_warm_start(stats.versions)
            if stats.due(now):
                metrics = stats.collect(now, replicas)
                self._report(metrics, self.examples, elapsed)
                progress.show(metrics)
            point = evaluator.tick(now, self.examples, elapsed, replicas.stopping)
            if point is not None:
                self._report(*point)
            checkpointer.tick(now, elapsed)
            if not replicas.stopping and (
                self.examples >= budget or (cfg.run.max_seconds and elapsed >= cfg.run.max_seconds)
            ):
                replicas.stop()  # let the calls in flight finish, submit no more
        progress.close()
        seconds = self.elapsed_before + (time.perf_counter() - t_start)
        for point in evaluator.drain():
            self._report(*point)
        return self._finish(seconds, checkpointer)

    def _clocked_parts(self, started: float) -> tuple[Evaluator, Checkpointer, StatsCollector]:
        """The parts that run on clocks of their own, all started at `started`."""
        cfg = self.cfg
        evaluator = Evaluator(
            self.averager,
            self.faults,
            cfg.run.eval_interval_s,
            started=started,
            examples=self.examples,
            seconds=self.elapsed_before,
            after=cfg.run.eval_scoring == "after",
        )
        checkpointer = Checkpointer(
            cfg,
            self.checkpoint_dir or "",
            self.shards,
            self.averager,
            self.scheduler,
            self.faults,
            self.callbacks,
            run_id=self.run_id,
            started=started,
        )
        stats = StatsCollector(
            self.shards,
            self.faults,
            num_replicas=cfg.ps.num_replicas,
            train_examples=self.train_examples,
            examples=self.examples,
            started=started,
        )
        return evaluator, checkpointer, stats

    def _report(self, metrics: dict[str, float], examples: int, seconds: float) -> None:
        """Send metrics to the callbacks and keep them in the job's history."""
        self.callbacks.on_metrics(metrics, examples)
        self.history.append(metrics | {"examples": examples, "seconds": seconds})

    # -- the end -------------------------------------------------------------------------------
    def _finish(self, seconds: float, checkpointer: Checkpointer) -> TrainResult:
        self.scheduler.find_unseen_restarts()
        ray.get(self.averager.stop.remote(), timeout=RPC_TIMEOUT_S)
        final = ray.get(self.averager.evaluate.remote(), timeout=10 * RPC_TIMEOUT_S)
        infos = ray.get([s.stats.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        if self.checkpoint_dir:
            checkpointer.save(seconds)
        refused: Counter[str] = Counter()
        hist: Counter[int] = Counter()
        for x in infos:
            refused.update(x["refused"])
            hist.update({int(k): v for k, v in x["staleness_hist"].items()})
            self.faults["shard_restarts"] += int(x.get("restarts", 0))
        state = ray.get(self.averager.inference_state.remote(), timeout=10 * RPC_TIMEOUT_S)
        model = _plain_model(self.cfg, self.num_classes, state)
        result = TrainResult(
            run_id=self.run_id,
            examples=self.examples,
            epochs=self.examples / self.train_examples,
            seconds=seconds,
            updates=min(int(x["version"]) for x in infos),
            final=final,
            history=self.history,
            faults=dict(self.faults),
            refused=dict(refused),
            staleness_hist=dict(hist),
            replica_stats=self.scheduler.replica_stats,
            checkpoint_dir=self.checkpoint_dir or "",
            data_path=self.data_path,
        )
        # The fault counts again: a death found only at the end is in no stats tick.
        self.callbacks.on_metrics(
            {f"final_{k}": float(v) for k, v in final.items() if k.endswith("_error")}
            | fault_metrics(self.faults, self.scheduler),
            self.examples,
        )
        self.callbacks.on_end(result, model)
        return result

    def _teardown(self) -> None:
        self.scheduler.close()
        if self.averager is not None:
            ray.kill(self.averager, no_restart=True)
        if self.shm_dir:
            # Each shard clears the job's shared memory on its node; this covers the driver's.
            with contextlib.suppress(RayError):
                ray.get([s.release.remote() for s in self.shards], timeout=30)
            shm.remove(self.shm_dir)
        for actor in self.shards:
            ray.kill(actor, no_restart=True)


def _plain_model(cfg: JobConfig, num_classes: int, state: dict[str, torch.Tensor]):
    from distinception.model.archs import build_model

    model = build_model(cfg.model, num_classes)
    model.load_state_dict(state)
    return model.eval()
