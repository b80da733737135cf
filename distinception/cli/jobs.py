"""`train`, `sweep`, `ensemble` and `evaluate`: the commands that train and score models."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _job_config(args: argparse.Namespace):
    from distinception.config import from_dict
    from distinception.recipes import load_config

    cfg = load_config(args.recipe, args.config, args.set or [])
    if args.checkpoint_dir:
        cfg = from_dict({"run": {"checkpoint_dir": args.checkpoint_dir}}, cfg)
    if getattr(args, "register_as", None):
        cfg = from_dict({"tracking": {"register_as": args.register_as}}, cfg)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume and (args.config or args.set):
        from distinception.config import ConfigError

        raise ConfigError("--resume: continues a checkpointed job as it was; drop --config/--set")
    cfg = _job_config(args)
    if args.print_config:
        print(cfg.to_yaml(), end="")
        return 0
    # Training's room (torch, Ray, MLflow) loads only for a job: a mistaken or printed config
    # answers at once.
    from distinception.training import format_report, train

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

    cfg = _job_config(args)
    space = build_space(args.space or [], fixed=_fixed_keys(args))
    from distinception.tune.sweep import format_ranked, sweep  # Ray Tune: once the line is good

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

    from distinception.config import check_crops

    schemes = check_crops(s.strip() for s in args.crops.split(",") if s.strip())
    from distinception.evaluation import evaluate_target, format_report
    from distinception.tracking import default_tracking_uri

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    report = evaluate_target(
        args.target,
        schemes,
        uri=uri,
        split=args.split,
        limit=args.limit,
        data_path=args.data or "",
        log=not args.no_log,
    )
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


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


def add_parsers(sub: Any) -> None:
    """Add train, sweep, ensemble and evaluate to the main command's subparsers `sub`."""
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
