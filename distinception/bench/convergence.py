"""`distinception bench convergence`: top-1 error at an equal example budget.

Async PS with the default (async-aware) update, async PS with the previous update (Downpour
with full momentum and one step of lag: `ps.momentum_correction=none`, `ps.max_lag=1`), each scored
on its Polyak and raw weights, synchronous DDP (Ray Train) and a local loop
each see the same number of training examples of the generated set, with the same model,
optimizer and schedule, on several seeds. DDP runs twice: with the replicas' batch per worker,
and with it split across the workers, so that an update averages as many examples as a PS
update does (this separates asynchrony from update size). Errors are scored the same way for all
(center crop on the validation split, BatchNorm statistics recomputed), and no system's clock
counts its scoring: DDP and the local loop stop theirs, and the PS's averager holds the weights
it is asked for and scores them after training (`run.eval_scoring: after`).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from distinception import api
from distinception.bench.choices import (
    DDP,
    DDP_SPLIT,
    LOCAL,
    POLYAK,
    PREV_POLYAK,
    PREV_RAW,
    RAW,
    SYSTEMS,
    UPDATES,
    parse_systems,
)
from distinception.bench.common import (
    LocalTrainer,
    describe_data,
    fit_cpus,
    header,
    local_ray,
    machine,
    markdown_table,
    open_stream,
    top1_error,
)
from distinception.config import JobConfig, apply_overrides, from_dict, nest
from distinception.data.generated import resolve_data
from distinception.model.archs import describe_model
from distinception.plots import line_plot
from distinception.recipes import get_recipe


def _ps(cfg: JobConfig, budget: int, eval_s: float, straggler: float) -> dict[str, Any]:
    cfg = from_dict(
        {
            "run": {
                "epochs": 0.0,
                "max_examples": budget,
                "max_seconds": 0.0,
                "eval_interval_s": eval_s,
                # Scored once training ends, so the PS's clock, like DDP's and the local loop's,
                # leaves out the time its evaluations take.
                "eval_scoring": "after",
                "progress": False,
            }
        },
        cfg,
    )
    res = api.train(cfg, track=False, straggler=straggler)
    # Each evaluation at the training seconds and examples of its request (the clock starts
    # when the replicas do, not when the actors are being created), then the final one.
    points = [h for h in res.history if "raw_top1_error" in h]
    final = (res.seconds, res.examples)
    raw = [(h["seconds"], h["examples"], h["raw_top1_error"]) for h in points]
    pol = [(h["seconds"], h["examples"], h["polyak_top1_error"]) for h in points]
    raw.append((*final, res.final["raw_top1_error"]))
    pol.append((*final, res.final["polyak_top1_error"]))
    return {RAW: raw, POLYAK: pol}


def local_curve(
    cfg: JobConfig,
    data: str,
    num_classes: int,
    budget: int,
    points: int,
    epoch: int,
    threads: int = 1,
) -> list[tuple[float, int, float]]:
    """(training seconds, examples seen, top-1 error) of the local loop, `points` times over
    `budget` examples; the clock stops while it is scored. One thread by default, as a replica
    runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
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
        torch.set_num_threads(before)
    return curve


def interval95(values: list[float]) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t; 0 for one value)."""
    if len(values) < 2:
        return 0.0
    from scipy.stats import t

    return float(t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


def _save_curves(out_dir: str, curves: dict[str, list[list[tuple[float, int, float]]]]) -> None:
    """Keep every (seconds, examples, error) point after each run, so a long benchmark that is
    stopped still leaves what it measured, and figures the table does not show (another
    target, another point on the curve) can be read from it afterwards."""
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, "curves.json.tmp")
    with open(tmp, "w") as f:
        json.dump({k: v for k, v in curves.items() if v}, f)
    os.replace(tmp, os.path.join(out_dir, "curves.json"))


def to_target(curve: list[tuple[float, int, float]], target: float) -> tuple[float, int] | None:
    """(seconds, examples) at the first evaluation at or below `target` error, or None."""
    for seconds, examples, err in curve:
        if err <= target:
            return seconds, examples
    return None


def versus(
    runs: list[list[tuple[float, int, float]]],
    ref: list[list[tuple[float, int, float]]],
    target: float,
) -> tuple[list[float | None], int, int]:
    """Each seed's seconds to `target` over the reference's on the same seed (None where either
    run missed it), the seeds where this system got there first (the reference missing it
    counts), and the seeds where either got there.

    A ratio of the mean times leaves out the seeds a system never reached the target in, so a
    reference that misses in one seed looks faster than it is; seed by seed, that seed counts
    against it, and the spread of the ratios says how far one run of each can be trusted."""
    ratios: list[float | None] = []
    first = either = 0
    for run, other in zip(runs, ref, strict=False):
        mine, theirs = to_target(run, target), to_target(other, target)
        ratios.append(mine[0] / theirs[0] if mine and theirs and theirs[0] > 0 else None)
        either += bool(mine or theirs)
        first += bool(mine and (theirs is None or mine[0] < theirs[0]))
    return ratios, first, either


def versus_table(
    curves: dict[str, list[list[tuple[float, int, float]]]], target: float
) -> list[str]:
    """The seed-by-seed comparison of seconds to target against sync DDP (the local loop when
    DDP did not run); nothing when neither ran."""
    ref = DDP if DDP in curves else LOCAL if LOCAL in curves else None
    if ref is None:
        return []

    def seconds(run: list[tuple[float, int, float]]) -> str:
        hit = to_target(run, target)
        return f"{hit[0]:.0f}" if hit else "-"

    rows = []
    for name, runs in curves.items():
        times = " / ".join(seconds(run) for run in runs)
        if name == ref:
            rows.append([name, times, "", "", ""])
            continue
        ratios, first, either = versus(runs, curves[ref], target)
        paired = [r for r in ratios if r is not None]
        rows.append(
            [
                name,
                times,
                " / ".join("-" if r is None else f"{r:.2f}" for r in ratios),
                f"{statistics.mean(paired):.2f} ± {interval95(paired):.2f}" if paired else "-",
                f"{first}/{either}",
            ]
        )
    return [
        "",
        f"Seconds to {100 * target:.1f}% error, seed by seed (- where a run did not reach it), "
        f"each seed's time over {ref}'s on the same seed, and the seeds where a system reached it "
        f"first ({ref} missing it counts) out of those where either did:",
        "",
        *markdown_table(
            [
                "system",
                "seconds to target, per seed",
                f"/ {ref}, per seed",
                f"/ {ref}, mean ± 95% CI",
                "first",
            ],
            rows,
        ),
    ]


def _summary(
    name: str, runs: list[list[tuple[float, int, float]]], target: float
) -> tuple[list[Any], list[float]]:
    errs = [run[-1][2] for run in runs]
    hits = [h for h in (to_target(run, target) for run in runs) if h is not None]
    reach = (
        f"{statistics.mean(h[1] for h in hits):,.0f} / {statistics.mean(h[0] for h in hits):.0f}"
        if hits
        else "-"
    )
    row = [
        name,
        f"{100 * statistics.mean(errs):.1f} ± {100 * interval95(errs):.1f}",
        f"{100 * min(errs):.1f}-{100 * max(errs):.1f}",
        f"{len(hits)}/{len(runs)}",
        reach,
        f"{statistics.mean(run[-1][1] for run in runs):,.0f}",
        f"{statistics.mean(run[-1][0] for run in runs):.0f}",
    ]
    return row, errs


#: The seed of the learning-rate sweep: none of the compared seeds (0 .. seeds - 1), so the pick
#: is not scored on the runs that chose it.
SWEEP_SEED = 1000


def _sweep_lr(
    base: JobConfig,
    systems: tuple[str, ...],
    lrs: tuple[float, ...],
    run_system: Any,
    out_dir: str,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each system once at each learning rate, one trial at a time (they time themselves);
    returns every system's best lr and the rows of the grid."""
    from ray import tune

    from distinception.tracking import parent_run, record_child_run, tracking_uri

    uri = tracking_uri(base)
    grid = {"system": list(systems), "lr": sorted(lrs)}
    name = f"bench-convergence-lr-{base.name}"
    with parent_run(base, "bench-lr-sweep", name, {"systems": systems, "lrs": lrs}) as parent:

        def trial(config: dict[str, Any]) -> None:
            import ray

            cfg = from_dict({"optim": {"lr": config["lr"]}, "run": {"seed": SWEEP_SEED}}, base)
            # The system runs in a task of its own, scheduled outside the trial's placement
            # group (Tune would capture its actors there): it asks for its own CPUs, as in the
            # comparison that follows.
            task = ray.remote(run_system).options(num_cpus=0, scheduling_strategy="DEFAULT")
            curves = ray.get(task.remote(config["system"], cfg))
            # The parameter server is judged on its Polyak weights, the others on theirs.
            series = next(k for k in curves if k not in (RAW, PREV_RAW))
            error = curves[series][-1][2]
            record_child_run(
                uri,
                parent,
                f"{config['system']}-lr{config['lr']:g}",
                {"system": config["system"], "optim.lr": config["lr"]},
                {"final_top1_error": error},
            )
            tune.report({"final_top1_error": error})

        tuner = tune.Tuner(
            # The trial itself only drives (a sliver of the extra logical CPU `local_ray` has
            # when sweeping): the systems it starts ask for their own CPUs.
            tune.with_resources(trial, {"cpu": 0.01}),
            param_space={k: tune.grid_search(v) for k, v in grid.items()},
            tune_config=tune.TuneConfig(max_concurrent_trials=1),
            run_config=tune.RunConfig(
                name="lr-sweep",
                storage_path=os.path.abspath(os.path.join(out_dir, "tune")),
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        results = tuner.fit()
        rows = [
            {
                "system": r.config["system"],
                "lr": r.config["lr"],
                "final_top1_error": float(r.metrics.get("final_top1_error", float("nan"))),
            }
            for r in results
        ]
    best: dict[str, float] = {}
    for name_ in systems:
        done = [
            r
            for r in rows
            if r["system"] == name_ and r["final_top1_error"] == r["final_top1_error"]
        ]
        if done:
            best[name_] = min(done, key=lambda r: r["final_top1_error"])["lr"]
    return best, rows


def run_convergence(
    replicas: int = 2,
    quick: bool = False,
    out_dir: str = "bench/results",
    recipe: str | None = None,
    budget: int | None = None,
    seeds: int = 3,
    points: int = 8,
    overrides: tuple[str, ...] = (),
    systems: tuple[str, ...] = tuple(SYSTEMS),
    target: float | None = None,
    lrs: tuple[float, ...] = (),
    straggler: float = 1.0,
) -> dict[str, Any]:
    """Every system on every seed; writes convergence.md and two PNG plots (error vs seconds and
    vs examples seen, mean over seeds).

    With `lrs`, each system first runs once at each of those learning rates (a Ray Tune grid,
    on a seed the comparison does not use, recorded as an MLflow parent run with a child per
    trial), and is then compared at the one where it ended lowest (its Polyak error for the
    parameter server). With `straggler` > 1, replica 0 of the parameter server and rank 0 of
    DDP take that many times their compute time per step (the local loop has no one to slow).

    The table gives the final error as mean ± the 95% interval over seeds, and the examples and
    seconds each system took to reach `target` error (default: 1.5 x the local loop's mean final
    error, or 0.5 without a local loop), averaged over the seeds that reached it; a second
    table sets each seed's seconds to `target` against sync DDP's (or the local loop's) on the
    same seed (`versus_table`)."""
    from distinception.bench.ddp import run_ddp

    systems = parse_systems(systems)
    given_recipe, given_target = recipe, target  # for the command line in the table
    recipe = recipe or ("tiny" if quick else "demo")
    base = fit_cpus(apply_overrides(get_recipe(recipe), overrides), replicas)
    # The demo model leaves chance within ~10k examples of the built-in set and is close to its
    # final error by ~100k (BENCHMARKS.md, "The built-in set"): 96k shows both phases.
    budget = budget or (4000 if quick else 96_000)
    info = machine()
    data, num_classes, train_examples = resolve_data(base)
    curves: dict[str, list[list[tuple[float, int, float]]]] = {
        series: [] for name in systems for series in SYSTEMS[name]
    }
    eval_s = max(2.0, budget / 2000 / points * 4)

    def ddp(cfg: JobConfig) -> list[tuple[float, int, float]]:
        """Sync DDP over `replicas` workers at `cfg`'s batch per worker, for the whole budget."""
        steps = max(1, budget // (replicas * cfg.data.batch_size))
        return run_ddp(
            cfg,
            data,
            num_classes,
            replicas,
            steps,
            worker_cpus=cfg.placement.replica_cpus,
            warmup_steps=0,
            eval_every=max(1, steps // points),
            examples_per_epoch=train_examples,
            straggler=straggler,
        )["curve"]

    def run_system(name: str, cfg: JobConfig) -> dict[str, list[tuple[float, int, float]]]:
        """One run of system `name` at `cfg`: a curve per series it adds."""
        if name == "ps":
            return _ps(cfg, budget, eval_s, straggler)
        if name == "ps-previous":
            ps = _ps(from_dict(nest(UPDATES["previous"]), cfg), budget, eval_s, straggler)
            return {PREV_POLYAK: ps[POLYAK], PREV_RAW: ps[RAW]}
        if name == "ddp":
            return {DDP: ddp(cfg)}
        if name == "ddp-split":
            split_batch = max(1, cfg.data.batch_size // replicas)
            return {DDP_SPLIT: ddp(from_dict({"data": {"batch_size": split_batch}}, cfg))}
        return {LOCAL: local_curve(cfg, data, num_classes, budget, points, train_examples)}

    t_start = time.perf_counter()
    best_lr: dict[str, float] = {}
    sweep_rows: list[dict[str, Any]] = []
    # A sweep's Tune trials hold a sliver of a CPU each while their systems run: one logical
    # CPU more keeps the systems' own shares whole (they are fitted to 2 CPUs either way).
    with local_ray(num_cpus=3 if lrs else 2):
        if lrs:
            best_lr, sweep_rows = _sweep_lr(base, systems, lrs, run_system, out_dir)
        for seed in range(seeds):
            for name in [n for n in SYSTEMS if n in systems]:
                cfg = from_dict({"run": {"seed": seed}}, base)
                if name in best_lr:
                    cfg = from_dict({"optim": {"lr": best_lr[name]}}, cfg)
                for series, curve in run_system(name, cfg).items():
                    curves[series].append(curve)
                _save_curves(out_dir, curves)
    wall = time.perf_counter() - t_start

    if target is None:
        target = 0.5
        if LOCAL in curves:
            target = min(0.95, 1.5 * statistics.mean(run[-1][2] for run in curves[LOCAL]))
    series_lr = {
        series: best_lr.get(name, base.optim.lr) for name in systems for series in SYSTEMS[name]
    }
    rows, finals = [], {}
    for name, runs in curves.items():
        row, finals[name] = _summary(name, runs, target)
        rows.append([row[0], f"{series_lr[name]:g}", *row[1:]])
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
        f" --budget {budget} --seeds {seeds}"
        + (f" --recipe {given_recipe}" if given_recipe else "")
        + (f" --target {given_target:g}" if given_target is not None else "")
        + (f" --systems {','.join(systems)}" if tuple(systems) != tuple(SYSTEMS) else "")
        + "".join(f" --set {o}" for o in overrides)
        + (f" --lrs {','.join(f'{lr:g}' for lr in lrs)}" if lrs else "")
        + (f" --straggler {straggler:g}" if straggler != 1 else "")
    )
    lines = [
        *header(cmd, info),
        f"Model `{base.name}` ({describe_model(base.model)}, "
        f"{base.model.input_size} px, {num_classes} classes, data {describe_data(data)}), batch "
        f"{base.data.batch_size}, lr {base.optim.lr}, momentum {base.optim.momentum}; {replicas} "
        f"replicas/workers; budget {budget:,} examples per run; {seeds} seeds; whole run "
        f"{wall:.0f} s. Examples per update: PS and local {base.data.batch_size}, {DDP} "
        f"{replicas * base.data.batch_size} ({replicas} x {base.data.batch_size}), {DDP_SPLIT} "
        f"{replicas * max(1, base.data.batch_size // replicas)} "
        f"({replicas} x {max(1, base.data.batch_size // replicas)}). Target error "
        f"{100 * target:.1f}%.",
        "",
        *markdown_table(
            [
                "system",
                "lr",
                "final top-1 error % (mean ± 95% CI)",
                "range %",
                "reached target",
                "examples / seconds to target",
                "examples",
                "seconds",
            ],
            rows,
        ),
        "",
        *versus_table(curves, target),
        "",
        f"![error vs seconds]({os.path.basename(png_t)}) "
        f"![error vs examples]({os.path.basename(png_n)})",
    ]
    if sweep_rows:
        lines += [
            "",
            f"Learning rates (a Tune grid, one run each on seed {SWEEP_SEED}; each system is "
            "compared above at its lowest final error, Polyak for the parameter server):",
            "",
            *markdown_table(
                ["system", "lr", "final top-1 error %", "picked"],
                [
                    [
                        r["system"],
                        f"{r['lr']:g}",
                        f"{100 * r['final_top1_error']:.1f}",
                        "yes" if best_lr.get(r["system"]) == r["lr"] else "",
                    ]
                    for r in sorted(sweep_rows, key=lambda r: (r["system"], r["lr"]))
                ],
            ),
        ]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "convergence.md"), "w") as f:
        f.write(text + "\n")
    return {
        "text": text,
        "finals": finals,
        "curves": curves,
        "pngs": [png_t, png_n],
        "target": target,
        "best_lr": best_lr,
        "sweep": sweep_rows,
    }
