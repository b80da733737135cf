"""`distinception bench convergence`: top-1 error at an equal example budget.

Async PS (Polyak and raw weights of the same run), synchronous DDP (Ray Train) and a local loop
each see the same number of training examples of the generated set, with the same model,
optimizer and schedule, on several seeds. DDP runs twice: with the replicas' batch per worker,
and with it split across the workers, so that an update averages as many examples as a PS
update does (this separates asynchrony from update size). Errors are scored the same way for all
(center crop on the validation split, BatchNorm statistics recomputed); the clocks of DDP and the
local loop stop while they are scored, the PS is scored by its averager on the side, as in a
real run.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from distinception.bench.common import (
    LocalTrainer,
    fit_cpus,
    header,
    line_plot,
    local_ray,
    machine,
    markdown_table,
    open_stream,
    top1_error,
)
from distinception.config import JobConfig, apply_overrides, from_dict
from distinception.ps.coordinator import Coordinator, Hooks, resolve_data
from distinception.recipes import get_recipe

POLYAK, RAW, DDP, LOCAL = "async PS, Polyak", "async PS, raw", "sync DDP", "local"
#: DDP with the per-worker batch divided by the workers: every update averages as many examples
#: as one of the PS's or the local loop's, which separates asynchrony from update size.
DDP_SPLIT = "sync DDP, split batch"


class _Evaluations(Hooks):
    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.points: list[tuple[float, int, float, float]] = []

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "raw_top1_error" in metrics:
            t = time.perf_counter() - self.t0
            self.points.append((t, step, metrics["raw_top1_error"], metrics["polyak_top1_error"]))


def _ps(cfg: JobConfig, budget: int, eval_s: float) -> dict[str, Any]:
    cfg = from_dict(
        {
            "run": {
                "epochs": 0.0,
                "max_examples": budget,
                "max_seconds": 0.0,
                "eval_interval_s": eval_s,
                "progress": False,
            }
        },
        cfg,
    )
    hooks = _Evaluations()
    res = Coordinator(cfg, hooks).run()
    final = (res.seconds, res.examples)
    raw = [(t, n, r) for t, n, r, _ in hooks.points] + [(*final, res.final["raw_top1_error"])]
    pol = [(t, n, p) for t, n, _, p in hooks.points] + [(*final, res.final["polyak_top1_error"])]
    return {RAW: raw, POLYAK: pol}


def _local(cfg: JobConfig, data: str, num_classes: int, budget: int, points: int, epoch: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = LocalTrainer(cfg, num_classes, open_stream(cfg, data), epoch)
        steps = max(1, budget // cfg.data.batch_size)
        every = max(1, steps // points)
        curve, clock, t0 = [], 0.0, time.perf_counter()
        for i in range(1, steps + 1):
            trainer.step()
            if i % every == 0 or i == steps:
                clock += time.perf_counter() - t0
                err = top1_error(cfg, data, num_classes, trainer.core.flat)
                curve.append((clock, i * cfg.data.batch_size, err))
                t0 = time.perf_counter()
    finally:
        torch.set_num_threads(threads)
    return curve


def run_convergence(
    replicas: int = 2,
    quick: bool = False,
    out_dir: str = "bench/results",
    recipe: str | None = None,
    budget: int | None = None,
    seeds: int = 3,
    points: int = 8,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every system on every seed; writes convergence.md and two PNG plots (error vs seconds and
    vs examples seen, mean over seeds)."""
    from distinception.bench.ddp import run_ddp

    recipe = recipe or ("tiny" if quick else "demo")
    base = fit_cpus(apply_overrides(get_recipe(recipe), overrides), replicas)
    # The demo model's error leaves chance only after ~40k examples (measured: Polyak top-1
    # 0.85 at 32k, 0.50 at 72k), so a full run must see well past that to compare anything.
    budget = budget or (4000 if quick else 96_000)
    info = machine()
    data, num_classes, train_examples = resolve_data(base)
    curves: dict[str, list[list[tuple[float, int, float]]]] = {
        POLYAK: [],
        RAW: [],
        DDP: [],
        DDP_SPLIT: [],
        LOCAL: [],
    }
    t_start = time.perf_counter()
    with local_ray():
        for seed in range(seeds):
            cfg = from_dict({"run": {"seed": seed}}, base)
            ps = _ps(cfg, budget, eval_s=max(2.0, budget / 2000 / points * 4))
            curves[POLYAK].append(ps[POLYAK])
            curves[RAW].append(ps[RAW])
            per_step = replicas * cfg.data.batch_size
            steps = max(1, budget // per_step)
            ddp = run_ddp(
                cfg,
                data,
                num_classes,
                replicas,
                steps,
                worker_cpus=cfg.ps.replica_cpus,
                warmup_steps=0,
                eval_every=max(1, steps // points),
                examples_per_epoch=train_examples,
            )
            curves[DDP].append(ddp["curve"])
            split_batch = max(1, cfg.data.batch_size // replicas)
            split = from_dict({"data": {"batch_size": split_batch}}, cfg)
            ddp_split = run_ddp(
                split,
                data,
                num_classes,
                replicas,
                max(1, budget // (replicas * split.data.batch_size)),
                worker_cpus=cfg.ps.replica_cpus,
                warmup_steps=0,
                eval_every=max(1, budget // (replicas * split.data.batch_size) // points),
                examples_per_epoch=train_examples,
            )
            curves[DDP_SPLIT].append(ddp_split["curve"])
            curves[LOCAL].append(_local(cfg, data, num_classes, budget, points, train_examples))
    wall = time.perf_counter() - t_start

    rows, finals = [], {}
    for name, runs in curves.items():
        errs = [run[-1][2] for run in runs]
        finals[name] = errs
        spread = statistics.stdev(errs) if len(errs) > 1 else 0.0
        rows.append(
            [
                name,
                f"{100 * statistics.mean(errs):.1f}%",
                f"{100 * spread:.1f}",
                f"{100 * min(errs):.1f}-{100 * max(errs):.1f}%",
                f"{statistics.mean(run[-1][1] for run in runs):,.0f}",
                f"{statistics.mean(run[-1][0] for run in runs):.0f}",
            ]
        )
    os.makedirs(out_dir, exist_ok=True)

    def mean_curve(runs: list[list[tuple[float, int, float]]], x: int):
        n = min(len(r) for r in runs)
        return [
            (statistics.mean(r[i][x] for r in runs), statistics.mean(r[i][2] for r in runs))
            for i in range(n)
        ]

    title = f"{base.name} model, {budget:,} examples, mean of {seeds} seeds"
    png_t = line_plot(
        os.path.join(out_dir, "convergence_seconds.png"),
        {k: mean_curve(v, 0) for k, v in curves.items()},
        "seconds of training",
        "top-1 error",
        title,
    )
    png_n = line_plot(
        os.path.join(out_dir, "convergence_examples.png"),
        {k: mean_curve(v, 1) for k, v in curves.items()},
        "examples seen",
        "top-1 error",
        title,
    )
    cmd = (
        f"distinception bench convergence --replicas {replicas}{' --quick' if quick else ''}"
        f" --budget {budget} --seeds {seeds}" + "".join(f" --set {o}" for o in overrides)
    )
    lines = [
        *header(cmd, info),
        f"Model `{base.name}` ({base.model.variant} GoogLeNet, width {base.model.width}, "
        f"{base.model.input_size} px, {num_classes} classes), batch {base.data.batch_size}, "
        f"lr {base.ps.lr}, momentum {base.ps.momentum}; {replicas} replicas/workers; budget "
        f"{budget:,} examples per run; {seeds} seeds; whole run {wall:.0f} s. Examples per "
        f"update: PS and local {base.data.batch_size}, {DDP} {replicas * base.data.batch_size} "
        f"({replicas} x {base.data.batch_size}), {DDP_SPLIT} "
        f"{replicas * max(1, base.data.batch_size // replicas)} "
        f"({replicas} x {max(1, base.data.batch_size // replicas)}).",
        "",
        *markdown_table(
            ["system", "final top-1 error (mean)", "std (points)", "range", "examples", "seconds"],
            rows,
        ),
        "",
        f"![error vs seconds]({os.path.basename(png_t)}) "
        f"![error vs examples]({os.path.basename(png_n)})",
    ]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "convergence.md"), "w") as f:
        f.write(text + "\n")
    return {"text": text, "finals": finals, "curves": curves, "pngs": [png_t, png_n]}
