"""`bench ...`: the benchmark commands' arguments, checked before any benchmark runs.

Only argparse, the config checks and the plain names in `bench.choices` are imported here, so
`distinception --help` stays fast; each benchmark loads, with torch and Ray, once its arguments
are good."""

from __future__ import annotations

import argparse
from typing import Any

from distinception.bench.choices import SYSTEMS, UPDATES, parse_systems, parse_updates
from distinception.config import ConfigError, parse_staleness


def _lrs(text: str) -> tuple[float, ...]:
    try:
        lrs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--lrs={text!r}: expected a comma list of learning rates") from None
    if any(not 0 < lr < 10 for lr in lrs):
        raise ConfigError(f"--lrs={text!r}: expected learning rates in (0, 10)")
    return lrs


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ConfigError(f"--replicas={text!r}: expected a comma list of integers >= 1")
    return counts


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench_command == "gpu":
        from distinception.bench.gpu import format_gpu, run_gpu

        if args.size < 32:
            raise ConfigError(f"--size={args.size}: expected an integer >= 32")
        r = run_gpu(batch=args.batch, steps=args.steps, size=args.size, device=args.device)
        print(format_gpu(r))
        return 0
    if args.bench_command == "updates":
        counts = _counts(args.replicas)
        updates = parse_updates(tuple(u for u in args.updates.split(",") if u))
        if args.seeds < 1:
            raise ConfigError(f"--seeds={args.seeds}: expected an integer >= 1")
        from distinception.bench.updates import run_updates

        res = run_updates(
            replicas=counts,
            updates=updates,
            seeds=args.seeds,
            quick=args.quick,
            out_dir=args.out,
            recipe=args.recipe,
            overrides=tuple(args.set or []),
        )
        print(res["text"])
        return 0
    if args.bench_command == "nodes":
        from distinception.recipes import get_recipe

        counts = _counts(args.replicas)
        if args.seconds is not None and args.seconds <= 0:
            raise ConfigError(f"--seconds={args.seconds}: expected a number > 0")
        get_recipe(args.recipe)  # a bad name fails here, before a cluster starts
        from distinception.bench.nodes import run_nodes

        res = run_nodes(
            replicas=counts,
            quick=args.quick,
            out_dir=args.out,
            recipe=args.recipe,
            seconds=args.seconds,
        )
        print(res["text"])
        return 0
    if args.replicas < 1:
        raise ConfigError(f"--replicas={args.replicas}: expected an integer >= 1")
    extra: dict[str, Any] = {}
    if args.bench_command == "throughput":
        for flag in ("seconds", "steps"):
            value = getattr(args, flag)
            if value is not None and value <= 0:
                raise ConfigError(f"--{flag}={value}: expected a number > 0")
        extra = {"recipe": args.recipe or "demo", "seconds": args.seconds, "steps": args.steps}
    if args.bench_command == "staleness":
        policies = tuple(p for p in args.policies.split(",") if p)
        for policy in policies:
            try:
                parse_staleness(policy)
            except ConfigError as err:
                raise ConfigError(f"--policies: {err}") from None
        if not policies or (args.budget is not None and args.budget < 1):
            raise ConfigError(
                f"--policies={args.policies!r} --budget={args.budget}: expected at least one "
                "policy and a number of examples >= 1"
            )
        extra = {
            "policies": policies,
            "budget": args.budget,
            "recipe": args.recipe,
            "overrides": tuple(args.set or []),
        }
    if args.bench_command == "convergence":
        if args.budget is not None and args.budget < 1:
            raise ConfigError(f"--budget={args.budget}: expected a number of examples >= 1")
        if args.seeds < 1:
            raise ConfigError(f"--seeds={args.seeds}: expected an integer >= 1")
        if args.target is not None and not 0 < args.target < 1:
            raise ConfigError(f"--target={args.target}: expected an error rate in (0, 1)")
        if not 1 <= args.straggler <= 100:
            raise ConfigError(f"--straggler={args.straggler:g}: expected a number in [1, 100]")
        extra = {
            "budget": args.budget,
            "seeds": args.seeds,
            "overrides": tuple(args.set or []),
            "systems": parse_systems(tuple(s for s in args.systems.split(",") if s)),
            "target": args.target,
            "recipe": args.recipe,
            "lrs": _lrs(args.lrs),
            "straggler": args.straggler,
        }
    # The benchmark, with torch and Ray, loads once its arguments are known to be good.
    if args.bench_command == "throughput":
        from distinception.bench.throughput import run_throughput as run
    elif args.bench_command == "convergence":
        from distinception.bench.convergence import run_convergence as run
    else:
        from distinception.bench.staleness import run_staleness

        def run(replicas: int, quick: bool, out_dir: str, **extra: Any) -> dict:
            counts = tuple(sorted({1, replicas, 2 * replicas}))
            return run_staleness(replicas=counts, quick=quick, out_dir=out_dir, **extra)

    print(run(replicas=args.replicas, quick=args.quick, out_dir=args.out, **extra)["text"])
    return 0


def add_parsers(sub: Any) -> None:
    """Add `bench` and its subcommands to the main command's subparsers `sub`."""
    bench = sub.add_parser(
        "bench", help="measure against the alternatives (results as in BENCHMARKS.md)"
    ).add_subparsers(dest="bench_command", required=True, metavar="SUBCOMMAND")
    for name, text in (
        ("throughput", "images/s: this PS vs the Ray docs pattern vs Ray Train DDP vs local"),
        ("convergence", "top-1 error at an equal example budget, over seeds"),
        ("staleness", "staleness against replicas and policy, and its effect on error"),
    ):
        p = bench.add_parser(name, help=text)
        p.add_argument("--replicas", type=int, default=2, help="replicas/workers (default 2)")
        p.add_argument("--quick", action="store_true", help="small sizes, a few minutes")
        p.add_argument("--out", default="bench/results", help="where tables and PNGs go")
        if name == "throughput":
            p.add_argument(
                "--recipe", default=None, help="run recipe every system runs (default demo)"
            )
            p.add_argument(
                "--seconds",
                type=float,
                default=None,
                help="seconds each system is timed (default 60; 15 with --quick)",
            )
            p.add_argument(
                "--steps",
                type=int,
                default=None,
                help="steps the local loop, the Ray docs pattern and DDP time (default 200; 40 "
                "with --quick)",
            )
        if name == "staleness":
            p.add_argument(
                "--policies",
                default="none,scale,bound:1",
                help="comma list of ps.staleness policies (default none,scale,bound:1)",
            )
            p.add_argument(
                "--budget",
                type=int,
                default=None,
                help="training examples per run (default 30,000; 3,000 with --quick)",
            )
            p.add_argument("--recipe", default=None, help="default demo; tiny with --quick")
            p.add_argument(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="override the recipe for every run, e.g. ps.num_shards=1 (repeatable)",
            )
        if name == "convergence":
            p.add_argument(
                "--budget",
                type=int,
                default=None,
                help="training examples per run (default 96,000; 4,000 with --quick)",
            )
            p.add_argument("--seeds", type=int, default=3, help="runs per system (default 3)")
            p.add_argument(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="override the recipe for every system, e.g. optim.lr=0.01 (repeatable)",
            )
            p.add_argument(
                "--recipe",
                default=None,
                help="run recipe every system starts from (default demo; tiny with --quick), "
                "e.g. digits with --set data.path=DIR from bench/import_digits.py",
            )
            p.add_argument(
                "--systems",
                default=",".join(SYSTEMS),
                help=f"comma list of {', '.join(SYSTEMS)} (default all)",
            )
            p.add_argument(
                "--lrs",
                default="",
                metavar="LR,LR,...",
                help="first run each system once at each learning rate (a Ray Tune grid, an "
                "MLflow parent run) and compare each at its best (default: the recipe's lr)",
            )
            p.add_argument(
                "--target",
                type=float,
                default=None,
                help="error rate the time-to-target columns use (default 1.5 x the local "
                "loop's final error)",
            )
            p.add_argument(
                "--straggler",
                type=float,
                default=1.0,
                metavar="FACTOR",
                help="replica 0 of the parameter server and rank 0 of DDP take FACTOR times "
                "their compute time per step (default 1: no straggler)",
            )
        p.set_defaults(func=cmd_bench)
    p = bench.add_parser(
        "updates",
        help="the async update rules side by side (error, staleness, momentum, DC memory)",
    )
    p.add_argument("--replicas", default="1,2", help="comma list of replica counts (default 1,2)")
    p.add_argument(
        "--updates",
        default="previous,default,dc",
        help=f"comma list of: {', '.join(UPDATES)} (default previous,default,dc)",
    )
    p.add_argument("--seeds", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--quick", action="store_true", help="the tiny recipe, 1,500 examples a run")
    p.add_argument("--recipe", default=None, help="run recipe (default demo; tiny with --quick)")
    p.add_argument("--out", default="bench/results", help="where updates.md and the PNG go")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override (repeatable)")
    p.set_defaults(func=cmd_bench)
    p = bench.add_parser(
        "nodes",
        help="across node boundaries: round trip, throughput, staleness, and the plan model",
    )
    p.add_argument(
        "--replicas", default="1,2,4,8", help="comma list of replica counts (default 1,2,4,8)"
    )
    p.add_argument(
        "--quick", action="store_true", help="fp32 round trips only, 8 s runs (default 40 s)"
    )
    p.add_argument("--recipe", default="demo", help="run recipe the jobs run (default demo)")
    p.add_argument("--seconds", type=float, default=None, help="seconds each job is timed")
    p.add_argument("--out", default="bench/results", help="where nodes.md and nodes.png go")
    p.set_defaults(func=cmd_bench)
    p = bench.add_parser("gpu", help="one replica vs a local torch loop on one GPU (no Ray)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--size", type=int, default=224, help="input size in pixels")
    p.add_argument("--device", default="cuda", help="cpu only checks that it runs")
    p.set_defaults(func=cmd_bench)
