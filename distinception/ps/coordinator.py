"""The coordinator: the control plane of one training job.

It starts the shards, the averager and the replicas, keeps the replicas busy, watches and
restarts them, checkpoints, and reports what happened through its callbacks (tracking is one;
this module never imports MLflow). It never touches weights or gradients while training: those
flow between replicas, shards and the averager directly.

The loop is a plain `while`: collect finished replica calls, resubmit, and on their own clocks
gather shard statistics, ask the averager for an evaluation, and checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from distinception.config import ConfigError, JobConfig, from_dict
from distinception.data.generated import resolve_data
from distinception.ps import checkpoint as ckpt
from distinception.ps import shm
from distinception.ps.actors import (
    RPC_TIMEOUT_S,
    remote_averager,
    remote_replica,
    remote_shard,
)
from distinception.ps.callbacks import Callback, CallbackList, TrainResult
from distinception.ps.capacity import check_fits
from distinception.ps.elastic import ReplicaPool
from distinception.ps.replica import build_flat_model
from distinception.ps.session import ray_session
from distinception.ps.shard import histogram_quantile

log = logging.getLogger(__name__)

#: Each replica call runs about this long: short enough to react to faults and budgets quickly,
#: long enough that the driver's round trips cost nothing measurable.
CALL_SECONDS = 1.0
STATS_EVERY_S = 2.0
#: The faults a job survives and counts, reported from its start (as 0) so a run's charts show
#: when each happened. `skipped_images` are undecodable images its replicas read past.
FAULTS = (
    "replica_failures",
    "replica_replaced",
    "replicas_lost",
    "shard_restarts",
    "shard_stats_failed",
    "eval_failed",
    "checkpoint_failed",
    "skipped_images",
)


def object_store_bytes() -> int:
    """Bytes in use in the object store of this node (-1 when Ray cannot say)."""
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return int(get_memory_info_reply(state).store_stats.object_store_bytes_used)
    except Exception:  # private API: metrics must never kill a run
        return -1


class Coordinator:
    def __init__(
        self,
        cfg: JobConfig,
        callbacks: Sequence[Callback] = (),
        *,
        checkpoint_dir: str | None = None,
        resume: bool = False,
    ) -> None:
        self.cfg = cfg
        self.callbacks = CallbackList(callbacks)
        self.resume = resume
        self.checkpoint_dir = checkpoint_dir or cfg.run.checkpoint_dir
        self.faults: Counter[str] = Counter()
        self.history: list[dict[str, Any]] = []
        self.replica_stats: dict[int, dict[str, Any]] = {}
        self.positions: dict[int, dict] = {}
        self.examples = 0
        self.run_id: str | None = None
        self.elapsed_before = 0.0
        self.pool: ReplicaPool | None = None
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
        self.replicas: dict[int, Any] = {}

    # -- setup ---------------------------------------------------------------------------------
    def _start_shards(self, resume: bool) -> None:
        cfg = self.cfg
        _, _, _, layout = build_flat_model(cfg, self.num_classes, seed=cfg.run.model_seed)
        self.layout = layout
        self.ranges = layout.shard_ranges(cfg.ps.num_shards)
        # Each shard builds the same initial weights from `run.model_seed` itself: nothing in the
        # object store that a restart would depend on (Ray warns about such constructor args).
        # One directory per job for the same-node shared-memory transport (see ps/shm.py).
        self.shm_dir = shm.job_dir() if cfg.ps.transport == "auto" and shm.available() else ""
        # Shards are registered by name (unique to this job) and replicas and the averager are
        # given the names: actor handles as constructor arguments live in the object store.
        job = uuid.uuid4().hex[:12]
        self.shard_names = [f"distinception-{job}-shard-{i}" for i in range(len(self.ranges))]
        self.shards = [
            remote_shard(cfg, self.shard_names[i]).remote(
                i,
                a,
                b,
                layout,
                None,
                cfg,
                self.train_examples,
                self._ckpt_uri(f"shard-{i}.pt"),
                resume,
                self.shm_dir,
                self.num_classes,
            )
            for i, (a, b) in enumerate(self.ranges)
        ]
        ray.get([s.ready.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)

    def _ckpt_uri(self, name: str) -> str:
        return ckpt.join(self.checkpoint_dir, name) if self.checkpoint_dir else ""

    def _new_replica(self, index: int) -> Any:
        actor = remote_replica(self.cfg).remote(
            index,
            self.cfg,
            self.data_path,
            self.num_classes,
            self.shard_names,
            self.ranges,
            self.cfg.ps.num_replicas,
            self.positions.get(index),
        )
        return actor

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

    def _load_progress(self) -> dict[str, Any]:
        progress = ckpt.load_json(self._ckpt_uri("progress.json"))
        self.examples = int(progress["examples"])
        self.positions = {int(k): v for k, v in progress["positions"].items()}
        self.run_id = progress.get("run_id")
        self.elapsed_before = float(progress.get("seconds", 0.0))
        self.faults.update(progress.get("faults", {}))
        return progress

    def _run(self) -> TrainResult:
        cfg = self.cfg
        self.data_path, self.num_classes, self.train_examples = resolve_data(cfg)
        if self.resume:
            self._load_progress()
        self._start_shards(self.resume)
        self.averager = remote_averager(cfg).remote(
            cfg,
            self.data_path,
            self.num_classes,
            self.shard_names,
            self.ranges,
            self._ckpt_uri("averager.pt"),
            self.resume,
        )
        ray.get(self.averager.start.remote(), timeout=RPC_TIMEOUT_S)
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

        budget = self.cfg.run.example_budget(self.train_examples) or 2**62
        warm = cfg.ps.warm_start_updates if self.examples == 0 else 0
        n_active = 1 if warm else cfg.ps.num_replicas
        if cfg.ps.elastic:
            self.replicas = self._first_elastic_replicas(n_active)
        else:
            self.replicas = {i: self._new_replica(i) for i in range(n_active)}
        steps = dict.fromkeys(self.replicas, 2)
        pending: dict[ray.ObjectRef, int] = {}
        for i, r in self.replicas.items():
            for _ in range(2):  # two calls queued: the replica never waits for the driver
                pending[r.train.remote(steps[i])] = i

        t_start = time.perf_counter()
        last_stats = last_eval = last_ckpt = t_start
        eval_ref: ray.ObjectRef | None = None
        eval_at = (self.examples, self.elapsed_before)
        losses: deque[float] = deque(maxlen=4 * cfg.ps.num_replicas)
        last_versions = self._shard_versions()
        last_examples = self.examples
        progress = self._progress_bar(budget)
        stopping = False
        while pending or (self.pool is not None and not stopping):
            if pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            else:  # elastic, every replica lost: wait for capacity to return
                ready = []
                time.sleep(0.5)
            now = time.perf_counter()
            if self.pool is not None and not stopping:
                for i, actor in self.pool.poll(self.replicas):
                    self.replicas[i] = actor
                    steps[i] = 2
                    for _ in range(2):
                        pending[actor.train.remote(2)] = i
            for ref in ready:
                i = pending.pop(ref)
                try:
                    stats = ray.get(ref)
                except RayActorError as err:
                    self._replica_failed(i, err, pending, stopping)
                    continue
                self._record(i, stats, losses)
                if stats["restarted"]:
                    # Ray restarted it and this call, queued after the failure, ran before any
                    # seek: its batches came from its stream's start. Seek it back now.
                    self._resume(i)
                # Aim each call at CALL_SECONDS of work.
                per_step = stats["wall_s"] / max(1, stats["steps"])
                steps[i] = max(1, min(256, int(CALL_SECONDS / max(per_step, 1e-4))))
                if not stopping:
                    pending[self.replicas[i].train.remote(steps[i])] = i
                if progress is not None:
                    progress.update(min(stats["examples"], max(0, budget - progress.n)))
            elapsed = self.elapsed_before + (now - t_start)
            if warm and n_active < cfg.ps.num_replicas and min(last_versions) >= warm:
                if self.pool is not None:
                    self.pool.set_target(cfg.ps.num_replicas)
                    n_active = cfg.ps.num_replicas
                for i in range(n_active, cfg.ps.num_replicas):
                    self.replicas[i] = self._new_replica(i)
                    steps[i] = 2
                    for _ in range(2):
                        pending[self.replicas[i].train.remote(2)] = i
                n_active = cfg.ps.num_replicas
            if now - last_stats >= STATS_EVERY_S:
                metrics, last_versions = self._shard_metrics(
                    last_versions, now - last_stats, self.examples - last_examples, losses
                )
                last_examples, last_stats = self.examples, now
                metrics["epoch"] = self.examples / self.train_examples
                faults = self.faults + Counter(
                    skipped_images=sum(int(x["skipped"]) for x in self.replica_stats.values())
                )
                metrics |= {f"fault_{k}": float(faults[k]) for k in FAULTS}
                if self.pool is not None:
                    metrics["replicas"] = float(len(self.replicas))
                    metrics["replicas_starting"] = float(len(self.pool.starting))
                    metrics["replicas_joined"] = float(self.pool.joined)
                    metrics["replica_nodes"] = float(self.pool.node_count())
                self.callbacks.on_metrics(metrics, self.examples)
                self.history.append(metrics | {"examples": self.examples, "seconds": elapsed})
                if progress is not None:
                    progress.set_postfix(
                        ex_s=f"{metrics['examples_per_s']:.0f}",
                        upd_s=f"{metrics['updates_per_s']:.1f}",
                        loss=f"{metrics.get('loss', float('nan')):.3f}",
                        stale=f"{metrics['staleness_mean']:.1f}",
                        refresh=False,
                    )
            if eval_ref is None and now - last_eval >= cfg.run.eval_interval_s and not stopping:
                eval_ref = self.averager.evaluate.remote()
                eval_at = (self.examples, elapsed)
                last_eval = now
            if eval_ref is not None and ray.wait([eval_ref], timeout=0)[0]:
                self._eval_done(eval_ref, *eval_at)
                eval_ref = None
            if self.checkpoint_dir and now - last_ckpt >= cfg.run.checkpoint_interval_s:
                self._checkpoint(elapsed)
                last_ckpt = now
            if not stopping and (
                self.examples >= budget or (cfg.run.max_seconds and elapsed >= cfg.run.max_seconds)
            ):
                stopping = True  # let the calls in flight finish, submit no more
                if self.pool is not None:
                    self.pool.close()
        if progress is not None:
            progress.close()
        seconds = self.elapsed_before + (time.perf_counter() - t_start)
        if eval_ref is not None:
            with contextlib.suppress(RayError):
                ray.get(eval_ref, timeout=RPC_TIMEOUT_S)
        return self._finish(seconds)

    def _progress_bar(self, budget: int):
        if not self.cfg.run.progress:
            return None
        from tqdm import tqdm

        total = budget if budget < 2**62 else None
        return tqdm(
            total=total,
            initial=min(self.examples, total or self.examples),
            unit="img",
            dynamic_ncols=True,
            desc="train",
        )

    def _record(self, i: int, stats: dict[str, Any], losses: deque[float]) -> None:
        self.examples += stats["examples"]
        if not stats["restarted"]:  # a restarted actor's position is not its recorded one
            self.positions[i] = stats["position"]
        self.replica_stats[i] = stats
        if math.isfinite(stats["loss"]):
            losses.append(stats["loss"])

    def _first_elastic_replicas(self, target: int) -> dict[int, Any]:
        """Ask for room for `target` replicas; wait (bounded) until `min_replicas` are up."""
        ps = self.cfg.ps
        self.pool = ReplicaPool(
            self._new_replica,
            ps.num_replicas,
            {"CPU": ps.replica_cpus, "GPU": ps.replica_gpus, **ps.replica_resources},
            self._slot_progress,
        )
        self.pool.set_target(target)
        replicas: dict[int, Any] = {}
        need = min(ps.min_replicas, target)
        deadline = time.monotonic() + ps.elastic_wait_s
        while len(replicas) < need:
            replicas.update(self.pool.poll(replicas))
            if len(replicas) >= need:
                break
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"ps.min_replicas={ps.min_replicas}: only {len(replicas)} replicas could be "
                    f"placed within ps.elastic_wait_s={ps.elastic_wait_s:g}; expected a cluster "
                    f"with room for replicas needing {self.pool.bundle}"
                )
            time.sleep(0.5)
        return replicas

    def _slot_progress(self, slot: int) -> tuple[int, int]:
        pos = self.positions.get(slot) or {}
        return int(pos.get("epoch", 0)), int(pos.get("offset", 0))

    def _replica_lost(self, i: int, pending: dict) -> None:
        """Elastic: a replica died (usually with its node); free its slot, refill it later."""
        self.faults["replicas_lost"] += 1
        for ref in [r for r, slot in pending.items() if slot == i]:
            del pending[ref]
        actor = self.replicas.pop(i, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)
        assert self.pool is not None
        self.pool.lost(i)

    def _replica_failed(self, i: int, err: BaseException, pending: dict, stopping: bool) -> None:
        """A replica died mid-call: Ray restarts it; seek it to its data position and go on."""
        self.faults["replica_failures"] += 1
        if self.pool is not None:
            log.warning("replica %d lost (%s); its slot is free", i, type(err).__name__)
            self._replica_lost(i, pending)
            return
        log.warning("replica %d failed (%s); restarting", i, type(err).__name__)
        if any(v == i for v in pending.values()):
            # Its other queued call fails too, or runs on the restarted actor and reports
            # `restarted`; either way it is sought then, once.
            return
        actor = self._resume(i)
        if not stopping:
            for _ in range(2):
                pending[actor.train.remote(2)] = i

    def _resume(self, i: int) -> Any:
        """Seek replica `i` to its recorded data position; replace it when out of restarts."""
        try:
            resumed = ray.get(
                self.replicas[i].seek.remote(self.positions.get(i) or {"epoch": 0, "offset": 0}),
                timeout=RPC_TIMEOUT_S,
            )
        except (RayActorError, GetTimeoutError):
            # Out of restarts: replace it with a fresh actor at the same data position.
            self.faults["replica_replaced"] += 1
            self.replicas[i] = self._new_replica(i)
            resumed = self.positions.get(i)
        # Recorded now, not only by its next call: a run that reaches its budget while the
        # replica is down makes no further call to it.
        if i in self.replica_stats:
            self.replica_stats[i]["resumed_from"] = resumed
        return self.replicas[i]

    def _shard_versions(self) -> list[int]:
        try:
            infos = ray.get([s.stats.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        except RayError:
            return [0] * len(self.shards)
        return [int(x["version"]) for x in infos]

    def _shard_metrics(
        self, last_versions: list[int], dt: float, examples: int, losses: deque[float]
    ) -> tuple[dict[str, float], list[int]]:
        try:
            infos = ray.get([s.stats.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        except RayError:
            self.faults["shard_stats_failed"] += 1
            return {
                "examples_per_s": examples / dt,
                "updates_per_s": 0.0,
                "staleness_mean": 0.0,
            }, last_versions
        versions = [int(x["version"]) for x in infos]
        recent: Counter[int] = Counter()
        for x in infos:
            recent.update({int(k): v for k, v in x["recent_hist"].items()})
        n = sum(recent.values())
        mean = sum(k * v for k, v in recent.items()) / n if n else 0.0
        deltas = [max(0, v - lv) for v, lv in zip(versions, last_versions, strict=True)]
        metrics = {
            "examples_per_s": examples / dt,
            "updates_per_s": sum(deltas) / len(deltas) / dt,
            "staleness_mean": mean,
            "staleness_p50": histogram_quantile(recent, 0.5),
            "staleness_p95": histogram_quantile(recent, 0.95),
            "lr": float(infos[0]["lr"]),
            # The momentum shards use after async compensation, and DC-ASGD's memory.
            "momentum": sum(float(x.get("momentum", 0.0)) for x in infos) / len(infos),
            "dc_bytes": float(sum(int(x.get("dc_bytes", 0)) for x in infos)),
            "version": float(min(versions)),
            "refused": float(sum(sum(x["refused"].values()) for x in infos)),
        }
        if losses:
            metrics["loss"] = sum(losses) / len(losses)
        store = object_store_bytes()
        if store >= 0:
            metrics["object_store_bytes"] = float(store)
        return metrics, versions

    def _eval_done(
        self, ref: ray.ObjectRef, examples: int, seconds: float
    ) -> dict[str, Any] | None:
        """Record an evaluation at the examples and training seconds of its request: the
        averager scores the weights it holds then, and scoring takes seconds, so stamping the
        result when it arrives would shift every curve to the right by the scoring time."""
        try:
            res = ray.get(ref, timeout=RPC_TIMEOUT_S)
        except RayError as err:
            self.faults["eval_failed"] += 1
            log.warning("evaluation failed: %s", err)
            return None
        metrics = {k: float(v) for k, v in res.items() if k.endswith("_error")}
        self.callbacks.on_metrics(metrics, examples)
        self.history.append(metrics | {"examples": examples, "seconds": seconds})
        return res

    def _checkpoint(self, elapsed: float) -> None:
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
            "examples": self.examples,
            "positions": {str(k): v for k, v in self.positions.items()},
            "versions": versions,
            "run_id": self.run_id,
            "seconds": elapsed,
            "faults": dict(self.faults),
            "config": self.cfg.to_dict(),
            "time": time.time(),
        }
        ckpt.save_json(self._ckpt_uri("progress.json"), progress)
        self.callbacks.on_checkpoint(self.checkpoint_dir, progress)

    def _finish(self, seconds: float) -> TrainResult:
        ray.get(self.averager.stop.remote(), timeout=RPC_TIMEOUT_S)
        final = ray.get(self.averager.evaluate.remote(), timeout=10 * RPC_TIMEOUT_S)
        infos = ray.get([s.stats.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        if self.checkpoint_dir:
            self._checkpoint(seconds)
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
            replica_stats=self.replica_stats,
            checkpoint_dir=self.checkpoint_dir or "",
            data_path=self.data_path,
        )
        self.callbacks.on_metrics(
            {f"final_{k}": float(v) for k, v in final.items() if k.endswith("_error")},
            self.examples,
        )
        self.callbacks.on_end(result, model)
        return result

    def _teardown(self) -> None:
        if self.pool is not None:
            self.pool.close()
        for actor in [*self.replicas.values(), self.averager]:
            if actor is not None:
                ray.kill(actor, no_restart=True)
        if self.shm_dir:
            # Each shard clears the job's shared memory on its node; this covers the driver's.
            with contextlib.suppress(RayError):
                ray.get([s.release.remote() for s in self.shards], timeout=30)
            shm.remove(self.shm_dir)
        for actor in self.shards:
            ray.kill(actor, no_restart=True)


def _plain_model(cfg: JobConfig, num_classes: int, state: dict[str, torch.Tensor]):
    from distinception.model.googlenet import build_model

    model = build_model(cfg.model, num_classes)
    model.load_state_dict(state)
    return model.eval()


def load_progress_config(checkpoint_dir: str) -> JobConfig:
    """The config a checkpointed job ran with, for `--resume`."""
    uri = ckpt.join(checkpoint_dir, "progress.json")
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
