"""What a running job reports every few seconds: shard statistics turned into metrics.

The shards know the updates and the staleness, the replicas the examples and the losses; only
the driver sees both, so it reads the shards on a clock of its own (`STATS_EVERY_S`) and sends
one metrics dict to the callbacks. A failed read is counted and reported with what the driver
knows by itself, never fatal: statistics must not stop training.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from distinception.ps.actors import RPC_TIMEOUT_S
from distinception.ps.shard import histogram_quantile

if TYPE_CHECKING:
    from distinception.ps.control.replicas import ReplicaScheduler

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


def fault_metrics(faults: Counter[str], replicas: ReplicaScheduler) -> dict[str, float]:
    """The job's fault counts as metrics, with the images its replicas skipped (which they
    count themselves)."""
    faults = faults + Counter(skipped_images=replicas.skipped_images())
    return {f"fault_{k}": float(faults[k]) for k in FAULTS}


def object_store_bytes() -> int:
    """Bytes in use in the object store of this node (-1 when Ray cannot say)."""
    try:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return int(get_memory_info_reply(state).store_stats.object_store_bytes_used)
    except Exception:  # private API: metrics must never kill a run
        return -1


class StatsCollector:
    """Reads the shards every `STATS_EVERY_S` and makes the metrics of the interval since."""

    def __init__(
        self,
        shards: list[Any],
        faults: Counter[str],
        *,
        num_replicas: int,
        train_examples: int,
        examples: int,
        started: float,
    ) -> None:
        self.shards = shards
        self.faults = faults
        self.train_examples = train_examples
        #: The replicas' last few call losses: the `loss` of the next interval.
        self.losses: deque[float] = deque(maxlen=4 * num_replicas)
        self.last_at = started
        self.last_examples = examples
        #: Each shard's version at the last read; the warm start waits on their minimum.
        self.versions = self._versions()

    def record(self, stats: dict[str, Any]) -> None:
        """Take in one replica call's stats."""
        if math.isfinite(stats["loss"]):
            self.losses.append(stats["loss"])

    def due(self, now: float) -> bool:
        return now - self.last_at >= STATS_EVERY_S

    def collect(self, now: float, replicas: ReplicaScheduler) -> dict[str, float]:
        """The metrics since the last call: rates, staleness, loss, faults, elastic replicas."""
        examples = replicas.examples
        metrics, self.versions = self._shard_metrics(
            now - self.last_at, examples - self.last_examples
        )
        self.last_examples, self.last_at = examples, now
        metrics["epoch"] = examples / self.train_examples
        metrics |= fault_metrics(self.faults, replicas)
        metrics |= replicas.pool_metrics()
        return metrics

    def _versions(self) -> list[int]:
        try:
            infos = ray.get([s.stats.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        except RayError:
            return [0] * len(self.shards)
        return [int(x["version"]) for x in infos]

    def _shard_metrics(self, dt: float, examples: int) -> tuple[dict[str, float], list[int]]:
        try:
            infos = ray.get([s.stats.remote() for s in self.shards], timeout=RPC_TIMEOUT_S)
        except RayError:
            self.faults["shard_stats_failed"] += 1
            return {
                "examples_per_s": examples / dt,
                "updates_per_s": 0.0,
                "staleness_mean": 0.0,
            }, self.versions
        versions = [int(x["version"]) for x in infos]
        recent: Counter[int] = Counter()
        for x in infos:
            recent.update({int(k): v for k, v in x["recent_hist"].items()})
        n = sum(recent.values())
        mean = sum(k * v for k, v in recent.items()) / n if n else 0.0
        deltas = [max(0, v - lv) for v, lv in zip(versions, self.versions, strict=True)]
        metrics = {
            "examples_per_s": examples / dt,
            "updates_per_s": sum(deltas) / len(deltas) / dt,
            "staleness_mean": mean,
            "staleness_p50": histogram_quantile(recent, 0.5),
            "staleness_p95": histogram_quantile(recent, 0.95),
            "lr": float(infos[0]["lr"]),
            # The momentum shards use after async compensation, and DC-ASGD's memory.
            "momentum": sum(float(x.get("momentum", 0.0)) for x in infos) / len(infos),
            "momentum_share": sum(float(x.get("momentum_share", 0.0)) for x in infos) / len(infos),
            "dc_bytes": float(sum(int(x.get("dc_bytes", 0)) for x in infos)),
            "version": float(min(versions)),
            "refused": float(sum(sum(x["refused"].values()) for x in infos)),
        }
        totals = [float(x["momentum_total"]) for x in infos if "momentum_total" in x]
        if totals:  # the total (explicit + implicit) momentum the closed loop measures
            metrics["momentum_total"] = sum(totals) / len(totals)
        if self.losses:
            metrics["loss"] = sum(self.losses) / len(self.losses)
        store = object_store_bytes()
        if store >= 0:
            metrics["object_store_bytes"] = float(store)
        return metrics, versions


class ProgressBar:
    """A terminal progress bar in examples (`run.progress`), or nothing."""

    def __init__(self, enabled: bool, budget: int, examples: int) -> None:
        self.budget = budget
        self.bar: Any = None
        if enabled:
            from tqdm import tqdm

            total = budget if budget < 2**62 else None
            self.bar = tqdm(
                total=total,
                initial=min(examples, total or examples),
                unit="img",
                dynamic_ncols=True,
                desc="train",
            )

    def update(self, examples: int) -> None:
        if self.bar is not None:
            self.bar.update(min(examples, max(0, self.budget - self.bar.n)))

    def show(self, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                ex_s=f"{metrics['examples_per_s']:.0f}",
                upd_s=f"{metrics['updates_per_s']:.1f}",
                loss=f"{metrics.get('loss', float('nan')):.3f}",
                stale=f"{metrics['staleness_mean']:.1f}",
                refresh=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
