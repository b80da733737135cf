"""The `distinception` command: parse arguments, then call one library function.

A user mistake (bad config value, missing path, malformed data) ends with one line on stderr and
exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn


class _Parser(argparse.ArgumentParser):
    """Usage mistakes end like every other user error: one line, exit status 2 (argparse
    prints the whole usage first). Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(2, f"distinception: error: {message} (see {self.prog} --help)\n")


def _user_errors() -> tuple[type[BaseException], ...]:
    from distinception.config import ConfigError

    errors: list[type[BaseException]] = [ConfigError, FileNotFoundError]
    try:
        from distinception.data.shards import DataError

        errors.append(DataError)
    except ImportError:  # pragma: no cover - data room not importable
        pass
    return tuple(errors)


def _job_config(args: argparse.Namespace):
    from distinception.api import load_config
    from distinception.config import from_dict

    cfg = load_config(args.recipe, args.config, args.set or [])
    if args.checkpoint_dir:
        cfg = from_dict({"run": {"checkpoint_dir": args.checkpoint_dir}}, cfg)
    if getattr(args, "register_as", None):
        cfg = from_dict({"tracking": {"register_as": args.register_as}}, cfg)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from distinception.training import format_report, train

    if args.resume and (args.config or args.set):
        from distinception.config import ConfigError

        raise ConfigError("--resume: continues a checkpointed job as it was; drop --config/--set")
    cfg = _job_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    result = train(cfg, address=args.address, resume=args.resume)
    if args.resume:
        from distinception.ps.coordinator import load_progress_config

        cfg = load_progress_config(args.resume)
    print(format_report(cfg, result))
    return 0


def _fixed_keys(args: argparse.Namespace) -> list[str]:
    """Dotted keys a user set with --set: a sweep does not vary what the user fixed."""
    return [item.partition("=")[0].strip() for item in args.set or []]


def cmd_sweep(args: argparse.Namespace) -> int:
    from distinception.tune.space import build_space
    from distinception.tune.sweep import format_ranked, sweep

    cfg = _job_config(args)
    space = build_space(args.space or [], fixed=_fixed_keys(args))
    print(
        f"sweep {cfg.name}: {space.trials(args.samples)} trials over {space.describe()}",
        flush=True,
    )
    result = sweep(
        cfg,
        space,
        samples=args.samples,
        scheduler=args.scheduler,
        max_concurrent=args.max_concurrent,
        out_dir=args.out or "",
        address=args.address,
    )
    metric = next(k for k in result.ranked[0] if k.endswith("_top1_error"))
    print(format_ranked(result.ranked, metric, list(space.domains)))
    print(
        f"{len(result.ranked)} trials in {result.seconds:.0f} s "
        f"({result.max_concurrent} at a time); MLflow parent run {result.parent_run_id}"
    )
    print(f"best job: {result.best_yaml}  (train it: distinception train --config ...)")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from distinception.tune.ensemble import ensemble, format_members

    cfg = _job_config(args)
    result = ensemble(
        cfg,
        members=args.members,
        augments=args.augments,
        sweep_dir=args.sweep,
        max_concurrent=args.max_concurrent,
        out_dir=args.out or "",
        address=args.address,
    )
    print(format_members(result))
    print(
        f"trained in {result.seconds:.0f} s ({result.max_concurrent} at a time); score it with: "
        f"distinception evaluate {result.parent_run_id} --crops center,ten,paper144"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import os

    from distinception.evaluation import evaluate_target, format_report
    from distinception.tracking import default_tracking_uri

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    report = evaluate_target(
        args.target,
        [s.strip() for s in args.crops.split(",") if s.strip()],
        uri=uri,
        split=args.split,
        limit=args.limit,
        data_path=args.data or "",
        log=not args.no_log,
    )
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def cmd_model_summary(args: argparse.Namespace) -> int:
    from distinception.config import ModelConfig
    from distinception.model.accounting import format_summary, summarize

    ModelConfig(variant=args.variant, width=args.width, input_size=args.input_size)
    summary = summarize(
        variant=args.variant,
        input_size=args.input_size,
        width=args.width,
        num_classes=args.num_classes,
    )
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from distinception.config import DataConfig
    from distinception.data.generated import generate_dataset

    DataConfig(
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        image_size=args.size,
    )
    manifest = generate_dataset(
        args.out,
        classes=args.classes,
        per_class=args.per_class,
        val_per_class=args.val_per_class,
        size=args.size,
        seed=args.seed,
        progress=True,
    )
    print(f"wrote {args.out}: {manifest.num_classes} classes, counts {manifest.counts}")
    return 0


def cmd_data_import(args: argparse.Namespace) -> int:
    from distinception.data.importer import import_tree

    report = import_tree(
        args.src,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        progress=True,
    )
    print(report.format())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from distinception.data.importer import inspect_dataset

    print(inspect_dataset(args.path, args.grid))
    return 0


def _lrs(text: str) -> tuple[float, ...]:
    from distinception.config import ConfigError

    try:
        lrs = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--lrs={text!r}: expected a comma list of learning rates") from None
    if any(not 0 < lr < 10 for lr in lrs):
        raise ConfigError(f"--lrs={text!r}: expected learning rates in (0, 10)")
    return lrs


def cmd_bench(args: argparse.Namespace) -> int:
    from distinception.config import ConfigError

    if args.bench_command == "gpu":
        from distinception.bench.gpu import format_gpu, run_gpu

        print(format_gpu(run_gpu(batch=args.batch, steps=args.steps, device=args.device)))
        return 0
    if args.bench_command == "updates":
        from distinception.bench.updates import run_updates

        try:
            counts = tuple(int(x) for x in args.replicas.split(",") if x.strip())
        except ValueError:
            counts = ()
        if not counts or min(counts) < 1:
            raise ConfigError(
                f"--replicas={args.replicas!r}: expected a comma list of integers >= 1"
            )
        if args.seeds < 1:
            raise ConfigError(f"--seeds={args.seeds}: expected an integer >= 1")
        res = run_updates(
            replicas=counts,
            updates=tuple(u for u in args.updates.split(",") if u),
            seeds=args.seeds,
            quick=args.quick,
            out_dir=args.out,
            recipe=args.recipe,
            overrides=tuple(args.set or []),
        )
        print(res["text"])
        return 0
    if args.replicas < 1:
        raise ConfigError(f"--replicas={args.replicas}: expected an integer >= 1")
    if args.bench_command == "throughput":
        from distinception.bench.throughput import run_throughput as run
    elif args.bench_command == "convergence":
        from distinception.bench.convergence import run_convergence as run
    else:
        from distinception.bench.staleness import run_staleness

        def run(replicas: int, quick: bool, out_dir: str, **extra: Any) -> dict:
            counts = tuple(sorted({1, replicas, 2 * replicas}))
            return run_staleness(replicas=counts, quick=quick, out_dir=out_dir, **extra)

    extra: dict[str, Any] = {}
    if args.bench_command == "throughput":
        for flag in ("seconds", "steps"):
            value = getattr(args, flag)
            if value is not None and value <= 0:
                raise ConfigError(f"--{flag}={value}: expected a number > 0")
        extra = {"recipe": args.recipe or "demo", "seconds": args.seconds, "steps": args.steps}
    if args.bench_command == "staleness":
        from distinception.config import parse_staleness

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
        extra = {"policies": policies, "budget": args.budget, "recipe": args.recipe}
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
            "systems": tuple(s for s in args.systems.split(",") if s),
            "target": args.target,
            "recipe": args.recipe,
            "lrs": _lrs(args.lrs),
            "straggler": args.straggler,
        }
    print(run(replicas=args.replicas, quick=args.quick, out_dir=args.out, **extra)["text"])
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from distinception.submit import Jobs, load_spec

    spec = load_spec(args.spec)
    jobs = Jobs(args.address)
    job_id = jobs.submit(
        spec,
        args.extra,
        with_requirements=not args.no_requirements,
        tracking_uri=args.tracking_uri,
    )
    print(f"submitted {job_id} to {jobs.address}", flush=True)
    if not args.follow:
        print(f"follow it with: distinception jobs logs {job_id} --follow --address {jobs.address}")
        return 0
    status = jobs.follow(job_id, sys.stdout)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from distinception.submit import Jobs, format_jobs

    jobs = Jobs(args.address)
    if args.jobs_command == "list":
        print(format_jobs(jobs.list()))
    elif args.jobs_command == "status":
        info = jobs.info(args.job_id)
        print(f"{args.job_id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    elif args.jobs_command == "logs":
        if args.follow:
            status = jobs.follow(args.job_id, sys.stdout)
            print(f"job {args.job_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        print(jobs.logs(args.job_id), end="")
    elif args.jobs_command == "stop":
        stopped = jobs.stop(args.job_id)
        print(f"{args.job_id}: " + ("stop requested" if stopped else "already finished"))
    return 0


def _add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        default=None,
        help="the cluster's Jobs API (default: RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, "
        "else http://127.0.0.1:8265 as forwarded by `ray dashboard cluster/aws.yaml`); "
        "the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token",
    )


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--recipe",
        default="demo",
        help="named run recipe: demo (default), paper, cluster, digits, tiny",
    )
    p.add_argument("--config", help="YAML file overlaid on the recipe")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="override one value, e.g. --set ps.num_replicas=4 (repeatable)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (auto, ray://host:10001 or host:port); "
        "default: start a local Ray on 127.0.0.1",
    )
    p.add_argument("--checkpoint-dir", help="checkpoint here (a directory or pyarrow.fs URI)")


#: One or two examples at the end of each command's --help.
EXAMPLES: dict[str, list[str]] = {
    "train": [
        "distinception train --recipe demo",
        "distinception train --recipe digits --set data.path=~/.cache/distinception/digits "
        "--set ps.num_replicas=4",
    ],
    "sweep": [
        "distinception sweep --recipe demo --samples 8 --scheduler asha",
        "distinception sweep --space ps.lr=grid:0.01,0.02,0.05 --samples 1 --set run.epochs=5",
    ],
    "ensemble": [
        "distinception ensemble --members 7 --augments paper,caffe",
        "distinception ensemble --members 3 --augments best-of-sweep --sweep sweeps/demo-TIME",
    ],
    "evaluate": [
        "distinception evaluate RUN_ID --crops center,ten,paper144",
        "distinception evaluate models:/googlenet/1 --crops ten --limit 500 --json",
    ],
    "model summary": [
        "distinception model summary",
        "distinception model summary --variant bn --input-size 64 --width 0.25 --json",
    ],
    "data generate": ["distinception data generate --out data/builtin --size 64"],
    "data import": ["distinception data import ~/images/flowers --out data/flowers"],
    "data inspect": ["distinception data inspect data/flowers --grid flowers.png"],
    "submit": [
        "distinception submit jobs/train.yaml --follow",
        "distinception submit jobs/train.yaml --address http://127.0.0.1:8265 -- "
        "--set ps.num_replicas=8",
    ],
    "jobs list": ["distinception jobs list --address http://127.0.0.1:8265"],
    "jobs status": ["distinception jobs status train-demo-1a2b3c"],
    "jobs logs": ["distinception jobs logs train-demo-1a2b3c --follow"],
    "jobs stop": ["distinception jobs stop train-demo-1a2b3c"],
    "bench throughput": ["distinception bench throughput --replicas 2 --quick"],
    "bench convergence": [
        "distinception bench convergence --quick",
        "distinception bench convergence --recipe digits --replicas 2 --seeds 5 "
        "--lrs 0.02,0.05 --set data.path=~/.cache/distinception/digits",
    ],
    "bench staleness": ["distinception bench staleness --quick"],
    "bench updates": [
        "distinception bench updates --quick",
        "distinception bench updates --recipe digits --replicas 1,2 --updates previous,default,dc "
        "--seeds 3 --set data.path=~/.cache/distinception/digits",
    ],
    "bench gpu": ["distinception bench gpu --batch 64 --steps 60"],
}


def leaf_parsers(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every runnable command's parser, with its words (`bench updates`)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(words), parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from leaf_parsers(sub, (*words, name))


def _add_examples(parser: argparse.ArgumentParser) -> None:
    for words, p in leaf_parsers(parser):
        lines = EXAMPLES.get(words, [])
        if lines:
            p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in lines)
            p.formatter_class = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="distinception",
        description="GoogLeNet trained with asynchronous SGD on a Ray parameter server, "
        "Polyak-averaged, every run in MLflow.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model on the parameter server")
    _job_args(p)
    p.add_argument("--resume", metavar="DIR", help="continue the job checkpointed in DIR")
    p.add_argument(
        "--register-as",
        metavar="NAME",
        help="register the Polyak model in the MLflow model registry as a new version of NAME "
        "(tagged with its recipe); same as --set tracking.register_as=NAME",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="Ray Tune over the augment and the learning rate")
    _job_args(p)
    p.add_argument(
        "--samples",
        type=int,
        default=4,
        help="number of trials (default 4); with grid domains, runs of the whole grid",
    )
    p.add_argument("--scheduler", default="asha", help="asha (default) or fifo")
    p.add_argument(
        "--max-concurrent", type=int, default=None, help="trials at once (default: as many as fit)"
    )
    p.add_argument(
        "--space",
        action="append",
        metavar="SECTION.KEY=DOMAIN",
        help="sweep a field: uniform:A:B, loguniform:A:B, choice:a,b (drawn at random per "
        "trial) or grid:a,b (every value in its own trial; --samples 2 runs the grid twice); "
        "repeatable; fields given with --set are held fixed",
    )
    p.add_argument("--out", help="output directory (default sweeps/NAME-TIME)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("ensemble", help="train K members from the same initial weights")
    _job_args(p)
    p.add_argument("--members", type=int, default=7)
    p.add_argument(
        "--augments",
        default="paper,caffe",
        help="comma list cycled over members: best-of-sweep, paper, caffe, none or YAML files",
    )
    p.add_argument("--sweep", help="sweep directory for best-of-sweep (default: the latest)")
    p.add_argument("--max-concurrent", type=int, default=None)
    p.add_argument("--out", help="output directory (default ensembles/NAME-TIME)")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("evaluate", help="score a run, a logged model or an ensemble with crops")
    p.add_argument("target", help="run id, ensemble run id, runs:/ID/model or models:/NAME/V")
    p.add_argument("--crops", default="center", help="comma list of center, ten, paper144")
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=0, help="score only the first N images")
    p.add_argument("--data", help="data set path (default: the one the model trained on)")
    p.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlruns)")
    p.add_argument("--no-log", action="store_true", help="do not log the grid to MLflow")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    p.set_defaults(func=cmd_evaluate)

    model = sub.add_parser("model", help="inspect the model").add_subparsers(
        dest="model_command", required=True, metavar="SUBCOMMAND"
    )
    p = model.add_parser("summary", help="params and multiply-adds per Table-1 row")
    p.add_argument("--variant", default="faithful", choices=["faithful", "bn"])
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    p.set_defaults(func=cmd_model_summary)

    data = sub.add_parser("data", help="create and inspect Parquet data shards").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    p = data.add_parser("generate", help="write the built-in generated data set")
    p.add_argument("--out", default="data/generated")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_data_generate)

    p = data.add_parser("import", help="turn an ImageFolder/ImageNet-style tree into shards")
    p.add_argument("src")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_data_import)

    p = data.add_parser("inspect", help="print a manifest summary and write a sample grid PNG")
    p.add_argument("path")
    p.add_argument("--grid", default=None, help="where to write the sample grid PNG")
    p.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser("submit", help="submit a job spec (jobs/*.yaml) to a Ray cluster")
    p.add_argument("spec", help="job spec YAML, e.g. jobs/train.yaml")
    p.add_argument("extra", nargs="*", help="after --: arguments appended to the job's command")
    _add_address(p)
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument(
        "--no-requirements",
        action="store_true",
        help="leave the pinned requirements out of the runtime env (the cluster already has them)",
    )
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI for the job (default: $MLFLOW_TRACKING_URI)"
    )
    p.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, inspect and stop submitted jobs").add_subparsers(
        dest="jobs_command", required=True, metavar="SUBCOMMAND"
    )
    p = jobs.add_parser("list", help="every job the cluster knows")
    _add_address(p)
    p = jobs.add_parser("status", help="a job's status")
    p.add_argument("job_id")
    _add_address(p)
    p = jobs.add_parser("logs", help="a job's logs")
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true", help="stream until the job ends")
    _add_address(p)
    p = jobs.add_parser("stop", help="stop a running job")
    p.add_argument("job_id")
    _add_address(p)
    for p in jobs.choices.values():
        p.set_defaults(func=cmd_jobs)

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
                help="override the recipe for every system, e.g. ps.lr=0.01 (repeatable)",
            )
            p.add_argument(
                "--recipe",
                default=None,
                help="run recipe every system starts from (default demo; tiny with --quick), "
                "e.g. digits with --set data.path=DIR from bench/import_digits.py",
            )
            p.add_argument(
                "--systems",
                default="ps,ps-previous,ddp,ddp-split,local",
                help="comma list of ps, ps-previous, ddp, ddp-split, local (default all)",
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
        help="comma list of: default, previous, no-lag, lag, dc, dc-only, dc-constant, scale, "
        "scale+mc, bound:1, bound:1+mc, warm-start, adagrad (default previous,default,dc)",
    )
    p.add_argument("--seeds", type=int, default=3, help="runs per cell (default 3)")
    p.add_argument("--quick", action="store_true", help="the tiny recipe, 1,500 examples a run")
    p.add_argument("--recipe", default=None, help="run recipe (default demo; tiny with --quick)")
    p.add_argument("--out", default="bench/results", help="where updates.md and the PNG go")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override (repeatable)")
    p.set_defaults(func=cmd_bench)
    p = bench.add_parser("gpu", help="one replica vs a local torch loop on one GPU (no Ray)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cuda", help="cpu only checks that it runs")
    p.set_defaults(func=cmd_bench)
    _add_examples(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if argv[:1] == ["submit"] and "--" in argv:
        # argparse cannot take positionals after options; everything past -- goes to the job.
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if extra:
        args.extra = [*args.extra, *extra]
    try:
        return int(args.func(args) or 0)
    except _user_errors() as err:
        print(f"distinception: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distinception: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        # Not the user's mistake: one line and where the whole traceback went, status 1.
        log = _crash_log(argv)
        first = (str(err).strip().splitlines() or [""])[0][:300]
        print(
            f"distinception: unexpected {type(err).__name__}: {first} (traceback in {log})",
            file=sys.stderr,
        )
        return 1


def _crash_log(argv: list[str]) -> str:
    """Write the current exception's traceback to a file under the cache directory."""
    import tempfile
    import time
    import traceback
    from pathlib import Path

    text = f"distinception {' '.join(argv)}\n\n{traceback.format_exc()}"
    folder = Path(os.environ.get("DISTINCEPTION_LOG_DIR", "~/.cache/distinception/logs"))
    try:
        folder = folder.expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(text)
    except OSError:
        fd, name = tempfile.mkstemp(prefix="distinception-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        path = Path(name)
    return str(path)


if __name__ == "__main__":
    sys.exit(main())
