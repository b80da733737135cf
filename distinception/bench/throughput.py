"""`distinception bench throughput`: images/s and updates/s of four ways to train one model.

(a) this parameter server (S shards, N replicas, the averager sampling as in a real run);
(b) the Ray docs' parameter-server pattern (`docs_pattern`) with N workers;
(c) Ray Train `TorchTrainer`, DDP over gloo, N workers;
(d) a local single-process loop (one thread, like one replica).
Same model, batch, data, optimizer and CPU share per worker; then the same with replica/worker 0
slowed 2x (`--straggler`). Rates are taken after start-up and warm-up. (b) and (c) time the
two scenarios one after the other on the same workers; (a) runs a job for each.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from distinception import api
from distinception.bench.common import (
    LocalTrainer,
    fit_cpus,
    header,
    local_ray,
    machine,
    markdown_table,
    open_stream,
)
from distinception.config import JobConfig, from_dict
from distinception.data.generated import resolve_data
from distinception.model.archs import describe_model
from distinception.plots import bar_chart
from distinception.recipes import get_recipe

PS, DOCS, DDP, LOCAL = "parameter server", "Ray docs pattern", "Ray Train DDP", "local loop"


def steady_rates(result: Any) -> tuple[float, float]:
    """(images/s, updates/s) between the first and last statistics of a run, so start-up and
    the final evaluation are left out; the whole run's rates if it was too short for that."""
    h = [m for m in result.history if "version" in m and m["examples"] > 0]
    if len(h) >= 2 and h[-1]["examples"] > h[0]["examples"]:
        dt = h[-1]["seconds"] - h[0]["seconds"]
        return (h[-1]["examples"] - h[0]["examples"]) / dt, (
            h[-1]["version"] - h[0]["version"]
        ) / dt
    return result.examples / result.seconds, result.updates / result.seconds


def run_ps(cfg: JobConfig, seconds: float, straggler: float = 1.0) -> dict[str, Any]:
    cfg = from_dict(
        {
            "run": {
                "epochs": 0.0,
                "max_examples": 0,
                "max_seconds": seconds,
                "eval_interval_s": 1e9,
                "progress": False,
            }
        },
        cfg,
    )
    result = api.train(cfg, track=False, straggler=straggler)
    images, updates = steady_rates(result)
    return {"images_per_s": images, "updates_per_s": updates, "result": result}


def run_local(cfg: JobConfig, data: str, num_classes: int, steps: int) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = LocalTrainer(cfg, num_classes, open_stream(cfg, data))
        for _ in range(3):
            trainer.step()
        t = time.perf_counter()
        for _ in range(steps):
            trainer.step()
        wall = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
    return {"images_per_s": steps * cfg.data.batch_size / wall, "updates_per_s": steps / wall}


def measure(
    cfg: JobConfig, seconds: float, steps: int, straggler: float
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every system at full speed, then with worker 0 slowed by `straggler`. The parameter
    server runs a job for each (a job is what a user runs); the docs pattern and DDP time both
    phases on the same workers, one after the other; the local loop has no worker to slow."""
    from distinception.bench.ddp import run_ddp_phases
    from distinception.bench.docs_pattern import run_docs_pattern

    data, num_classes, train_examples = resolve_data(cfg)
    n, cpus = cfg.ps.num_replicas, cfg.placement.replica_cpus
    phases = (1.0, straggler)
    ps = [run_ps(cfg, seconds, factor) for factor in phases]
    docs = run_docs_pattern(
        cfg,
        data,
        num_classes,
        n,
        seconds=seconds,
        worker_cpus=cpus,
        examples_per_epoch=train_examples,
        stragglers=phases,
    )
    ddp = run_ddp_phases(
        cfg,
        data,
        num_classes,
        n,
        max(4, steps // n),
        phases,
        worker_cpus=cpus,
        examples_per_epoch=train_examples,
    )
    local = run_local(cfg, data, num_classes, steps)
    plain, slow = ({PS: ps[i], DOCS: docs[i], DDP: ddp[i], LOCAL: local} for i in (0, 1))
    return plain, slow


def run_throughput(
    replicas: int = 2,
    quick: bool = False,
    out_dir: str = "bench/results",
    recipe: str = "demo",
    seconds: float | None = None,
    steps: int | None = None,
    straggler: float = 2.0,
) -> dict[str, Any]:
    """Measure (a)-(d), then again with a straggler; write throughput.md and throughput.png."""
    cmd = f"distinception bench throughput --replicas {replicas}{' --quick' if quick else ''}"
    if recipe != "demo":
        cmd += f" --recipe {recipe}"
    if seconds:
        cmd += f" --seconds {seconds:g}"
    if steps:
        cmd += f" --steps {steps}"
    seconds = seconds or (15.0 if quick else 60.0)
    steps = steps or (40 if quick else 200)
    base = fit_cpus(get_recipe(recipe), replicas)
    info = machine()
    t0 = time.perf_counter()
    with local_ray():
        plain, slow = measure(base, seconds, steps, straggler)
    wall = time.perf_counter() - t0
    scenarios = {"all at full speed": plain, f"worker 0 slowed {straggler:g}x": slow}

    rows = []
    for name, res in scenarios.items():
        local = res[LOCAL]["images_per_s"]
        ps = res[PS]["images_per_s"]
        for system, r in res.items():
            ips = r["images_per_s"]
            same = system == LOCAL and name != "all at full speed"
            rows.append(
                [
                    name,
                    system + (" (no workers to slow)" if same else ""),
                    round(ips),
                    f"{r['updates_per_s']:.1f}",
                    f"{ips / local:.2f}" if local > 0 else "n/a",
                    f"{ps / ips:.2f}" if ips > 0 else "n/a",
                ]
            )
    os.makedirs(out_dir, exist_ok=True)
    png = bar_chart(
        os.path.join(out_dir, "throughput.png"),
        {k: {s: r["images_per_s"] for s, r in v.items()} for k, v in scenarios.items()},
        "images/s",
        f"{replicas} replicas/workers, {base.name} model, batch {base.data.batch_size}",
    )
    lines = [
        *header(cmd, info),
        f"Model `{base.name}` ({describe_model(base.model)}, "
        f"{base.model.input_size} px), batch {base.data.batch_size}, {base.ps.num_shards} shards, "
        f"{replicas} replicas/workers at {base.placement.replica_cpus} CPU and 1 torch thread "
        "each; "
        f"{seconds:g} s per asynchronous system, {steps} local steps; whole run {wall:.0f} s.",
        "",
        *markdown_table(
            ["scenario", "system", "images/s", "updates/s", "x local", "PS / this"], rows
        ),
        "",
        f"![throughput]({os.path.basename(png)})",
    ]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "throughput.md"), "w") as f:
        f.write(text + "\n")
    return {"text": text, "png": png, "scenarios": scenarios, "seconds": wall}
