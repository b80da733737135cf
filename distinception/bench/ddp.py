"""Synchronous data-parallel training with Ray Train: `TorchTrainer`, DDP over gloo.

This is what a Ray user would run instead of a parameter server. Each worker runs our replica's
compute and the shard's optimizer locally (`LocalTrainer`) on its own share of the data; DDP
averages the gradients every step. Rank 0 may be made a straggler (`straggler`: the factor its
steps are slowed by), slowed exactly as a replica is (`straggle`), in one timed phase or in
several one after another at different factors, and optionally scores its weights at fixed
example counts (the clock stops while it does).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from distinception.bench.common import LocalTrainer, open_stream, top1_error
from distinception.config import JobConfig, from_dict
from distinception.ps import straggle


def _loop(config: dict[str, Any]) -> None:
    import ray.train
    import torch.distributed as dist

    torch.set_num_threads(1)
    cfg = from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    data, num_classes = config["data"], config["num_classes"]
    trainer = LocalTrainer(
        cfg,
        num_classes,
        open_stream(cfg, data, rank, world),
        config["examples_per_epoch"],
        workers=world,
    )
    trainer.core.model = torch.nn.parallel.DistributedDataParallel(trainer.core.model)
    per_step, steps, every = world * cfg.data.batch_size, config["steps"], config["eval_every"]
    slow = 1.0

    def step() -> None:
        t = time.perf_counter()
        trainer.step()
        straggle(slow, time.perf_counter() - t)

    for _ in range(config["warmup_steps"]):
        step()
    phases: list[dict[str, Any]] = []
    for factor in config["stragglers"]:
        slow = factor if rank == 0 else 1.0
        dist.barrier()
        curve: list[tuple[float, int, float]] = []
        clock, t0 = 0.0, time.perf_counter()
        for i in range(1, steps + 1):
            step()
            if every and (i % every == 0 or i == steps):
                dist.barrier()
                clock += time.perf_counter() - t0
                if rank == 0:
                    err = top1_error(cfg, data, num_classes, trainer.core.flat)
                    curve.append((clock, i * per_step, err))
                dist.barrier()
                t0 = time.perf_counter()
        dist.barrier()
        clock += time.perf_counter() - t0
        images = steps * per_step
        phases.append({"seconds": clock, "steps": steps, "images": images, "curve": curve})
    metrics = {"phases": phases}
    if rank != 0:
        ray.train.report(metrics)
        return
    # Ray Train keeps only metrics reported with a checkpoint: rank 0 reports its weights.
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(trainer.core.flat.clone(), os.path.join(tmp, "flat.pt"))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_ddp(
    cfg: JobConfig,
    data: str,
    num_classes: int,
    workers: int,
    steps: int,
    *,
    worker_cpus: float = 0.75,
    warmup_steps: int = 3,
    eval_every: int = 0,
    examples_per_epoch: int = 5000,
    straggler: float = 1.0,
) -> dict[str, Any]:
    """Run `steps` synchronous steps on `workers` workers; images/s and updates/s exclude the
    start-up and warm-up, and the curve (seconds, examples, top-1 error) is scored on rank 0."""
    (result,) = run_ddp_phases(
        cfg,
        data,
        num_classes,
        workers,
        steps,
        (straggler,),
        worker_cpus=worker_cpus,
        warmup_steps=warmup_steps,
        eval_every=eval_every,
        examples_per_epoch=examples_per_epoch,
    )
    return result


def run_ddp_phases(
    cfg: JobConfig,
    data: str,
    num_classes: int,
    workers: int,
    steps: int,
    stragglers: Sequence[float],
    *,
    worker_cpus: float = 0.75,
    warmup_steps: int = 3,
    eval_every: int = 0,
    examples_per_epoch: int = 5000,
) -> list[dict[str, Any]]:
    """`run_ddp` timed once per factor in `stragglers` (rank 0 slowed by it), one phase after
    another on the same workers: what a phase measures is the same as a run of its own, without
    paying Ray Train's start-up (a controller and a process per worker) again."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    with tempfile.TemporaryDirectory(prefix="dist-ddp-") as storage:
        trainer = TorchTrainer(
            _loop,
            train_loop_config={
                "cfg": cfg.to_dict(),
                "data": data,
                "num_classes": num_classes,
                "steps": steps,
                "warmup_steps": warmup_steps,
                "eval_every": eval_every,
                "examples_per_epoch": examples_per_epoch,
                "stragglers": list(stragglers),
            },
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=False, resources_per_worker={"CPU": worker_cpus}
            ),
            run_config=RunConfig(name="ddp", storage_path=os.path.abspath(storage)),
        )
        result = trainer.fit()
    return [
        {
            "images_per_s": m["images"] / m["seconds"],
            "updates_per_s": m["steps"] / m["seconds"],
            "seconds": m["seconds"],
            "examples": m["images"],
            "curve": [tuple(c) for c in m["curve"]],
        }
        for m in result.metrics["phases"]
    ]
