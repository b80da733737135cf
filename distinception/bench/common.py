"""What every benchmark shares: the machine description, a private local Ray, the local training
step the baselines run, evaluation of a plain model and markdown tables (plots are in
`distinception/plots.py`)."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import torch

from distinception.config import AveragerConfig, ConfigError, JobConfig, from_dict
from distinception.ps import ReplicaCore, build_optimizer, lr_factor


def machine() -> dict[str, str]:
    """Cores, memory, GPU, versions and date, for the header of every table."""
    import ray

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"{mem:.0f} GiB RAM, GPU: {gpu}; torch's CPU kernels "
        f"{torch.backends.cpu.get_cpu_capability()}; load average {os.getloadavg()[0]:.1f} at "
        "start",
        "versions": f"Python {sys.version.split()[0]}, torch {torch.__version__}, "
        f"ray {ray.__version__}",
    }


#: The largest data set a table hashes: reading it again must stay small beside the runs.
HASHED_BYTES = 2 << 30


def describe_data(path: str) -> str:
    """A table's name for its data set: where it is and, up to `HASHED_BYTES`, a digest of its
    bytes. Runs on the same code repeat only on the same bytes and the same CPU kernels
    (`machine`), and a set generated again on another machine may differ in its bytes."""
    from distinception.data.shards import open_manifest

    manifest = open_manifest(path)
    if manifest.nbytes > HASHED_BYTES:
        return f"`{path}` ({manifest.nbytes / 2**30:.1f} GiB, not hashed)"
    return f"`{path}` (bytes {manifest.digest()})"


def header(command: str, info: dict[str, str]) -> list[str]:
    return [
        f"Command: `{command}`  ",
        f"Date: {info['date']}  ",
        f"Machine: {info['machine']}  ",
        f"Versions: {info['versions']}",
        "",
    ]


@contextlib.contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[str]:
    """A private Ray on this machine (own temp dir, no dashboard), shut down afterwards; inside
    a Ray job, the job's cluster (`RAY_ADDRESS`) instead, as every command does."""
    from distinception.ps.session import ray_session

    with (
        tempfile.TemporaryDirectory(prefix="dist-bench-") as tmp,
        ray_session(
            None,
            num_cpus=num_cpus,
            _temp_dir=tmp,
            runtime_env={"env_vars": {"PYTHONPATH": source_root()}},
        ),
    ):
        yield tmp


def source_root() -> str:
    """This checkout on PYTHONPATH, for the actors of a Ray started here."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))


def fit_cpus(cfg: JobConfig, replicas: int, cpus: float = 2.0) -> JobConfig:
    """`cfg` with `replicas` replicas whose CPUs, with the shards' and averager's, fit `cpus`."""
    shards, at = cfg.ps.num_shards, cfg.placement
    left = cpus - shards * at.shard_cpus - at.averager_cpus
    if left <= 0:
        raise ConfigError(f"{shards} shards and the averager do not fit {cpus} CPUs")
    per = min(at.replica_cpus, round(left / replicas - 5e-4, 3))
    return from_dict({"ps": {"num_replicas": replicas}, "placement": {"replica_cpus": per}}, cfg)


def open_stream(cfg: JobConfig, data: str, consumer: int = 0, consumers: int = 1) -> Any:
    from distinception.data.loader import TrainStream

    return TrainStream.for_job(cfg, data, consumer, consumers)


class LocalTrainer:
    """The step a user writes without a parameter server: the replica's own compute, then the
    shard's optimizer (same decay groups, same schedule counted in examples) applied locally."""

    def __init__(
        self,
        cfg: JobConfig,
        num_classes: int,
        batches: Any,
        examples_per_epoch: int = 5000,
        workers: int = 1,
    ) -> None:
        """`workers`: how many trainers take each step together (synchronous data parallel).
        The schedule counts the examples of all of them, as the shards count every replica's."""
        if cfg.run.seed is not None:
            torch.manual_seed(cfg.run.seed)
        self.cfg = cfg
        self.core = ReplicaCore.for_job(cfg, num_classes, iter(batches))
        params = dict(self.core.model.named_parameters())
        decay = [params[e.name] for e in self.core.layout.entries if e.decay]
        plain = [params[e.name] for e in self.core.layout.entries if not e.decay]
        self.optimizer = build_optimizer(decay, plain, cfg.optim)
        self.seen = 0
        self.workers = workers
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda _: lr_factor(self.seen, cfg.optim, examples_per_epoch)
        )

    def step(self, batch: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
        loss = float(self.core.compute(batch if batch is not None else self.core.next_batch()))
        self.optimizer.step()
        self.seen += self.core.examples * self.workers
        self.scheduler.step()
        self.core.grad.zero_()
        self.core.examples = self.core.accumulated = 0
        return loss


def top1_error(cfg: JobConfig, data: str, num_classes: int, flat: torch.Tensor) -> float:
    """Top-1 error of plain weights, scored exactly as the averager scores the raw PS weights.

    The local loop and DDP's rank 0 score in the process that trains: building the scoring
    model draws from torch's global generator, which dropout also draws from, so the score runs
    on a forked generator. Otherwise where a run is scored would change how it trains."""
    from distinception.data.loader import bn_batches, val_batches
    from distinception.ps import AveragerCore

    with torch.random.fork_rng(devices=[]):
        core = AveragerCore(cfg.model, AveragerConfig(polyak="off"), num_classes)
        core.observe(0, flat)
        res = core.evaluate(lambda: val_batches(cfg, data), lambda: bn_batches(cfg, data))
    return float(res["raw_top1_error"])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def cell(v: Any) -> str:
        return f"{v:,.1f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return out + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
