"""`plan`: how many PS nodes and shards a number of replicas needs, simulated (`plan/`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_PROFILE = "h100-paper"


def _numbers(text: str, kind: type, name: str, low: float) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v < low for v in values):
        what = "integers" if kind is int else "numbers"
        raise argparse.ArgumentTypeError(
            f"{name}={text!r}: expected comma-separated {what} >= {low:g}"
        )
    return values


def cmd_plan(args: argparse.Namespace) -> int:
    from distinception.config import ConfigError

    try:
        return _plan(args)
    except ValueError as err:  # a simulation setting out of range, named by `Setup`
        if isinstance(err, ConfigError):
            raise
        flag, _, rest = str(err).partition("=")
        raise ConfigError(f"--{flag.replace('_', '-')}={rest}") from None


def _plan(args: argparse.Namespace) -> int:
    from distinception.config import ConfigError
    from distinception.plan.advise import format_plans, max_replicas, plan_replicas, read_cluster
    from distinception.plan.profiles import calibrate, load_profile, save_profile
    from distinception.plan.sim import Setup

    if not 0 < args.target <= 1:
        raise ConfigError(f"--target={args.target!r}: expected a share in (0, 1]")
    if not 0 <= args.stragglers <= 1:
        raise ConfigError(f"--stragglers={args.stragglers!r}: expected a share in [0, 1]")
    if args.cores_per_ps_node < 1:
        raise ConfigError(f"--cores-per-ps-node={args.cores_per_ps_node}: expected an integer >= 1")
    if args.calibrate:
        from distinception.api import load_config

        profile = calibrate(load_config(args.recipe or "paper", args.config, args.set or []))
    elif args.recipe or args.config or args.set:
        raise ConfigError("--recipe, --config and --set choose the job --calibrate measures")
    else:
        profile = load_profile(args.profile)
    if args.save_profile:
        save_profile(profile, args.save_profile)
    spec = read_cluster(args.cluster) if args.cluster else None
    cores = spec.cores_per_ps_node if spec else args.cores_per_ps_node
    replicas = args.replicas or ([spec.max_replicas] if spec else [64, 256, 1024])
    out: dict[str, Any] = {"profile": profile.__dict__, "plans": []}
    plans = []
    for link in args.link_gbps:
        for n in replicas:
            base = Setup(
                replicas=n,
                link_gbps=link,
                stragglers=round(args.stragglers * n),
                straggler_factor=args.straggler_factor,
                preemptions_per_hour=args.preemptions_per_hour,
                restart_s=args.restart_s,
                averager_interval_s=args.averager_interval_s,
                step_cv=args.step_cv,
            )
            plans.append(plan_replicas(profile, n, base, cores, args.target))
    out["plans"] = [p.row() for p in plans]
    text = [format_plans(plans, profile)]
    if args.plot:
        _plot(args.plot, out["plans"], profile.name, args.target)
        text += ["", f"plot: {args.plot}"]
    if spec:
        out["cluster"] = spec.__dict__ | {"holds": []}
        text += [
            "",
            f"{spec.path}: {spec.ps_nodes} PS node(s) of {cores} CPUs, so "
            f"ps.num_shards={spec.ps_nodes * cores}; it allows {spec.max_replicas} replicas",
        ]
        for link in args.link_gbps:
            base = Setup(
                replicas=1,
                shards=spec.ps_nodes * cores,
                ps_nodes=spec.ps_nodes,
                link_gbps=link,
                step_cv=args.step_cv,
                averager_interval_s=args.averager_interval_s,
            )
            most, broke = max_replicas(profile, base, args.target)
            out["cluster"]["holds"].append({"link_gbps": link, "max_replicas": most})
            text.append(
                f"  at {link:g} Gb/s: up to {most} replicas at >= {args.target:.0%} of ideal; "
                f"at {broke.setup.replicas} the {broke.saturates_first} is "
                f"{broke.result.utilization[broke.saturates_first]:.0%} busy"
            )
    print(json.dumps(out, indent=2) if args.json else "\n".join(text))
    return 0


def _plot(path: str, rows: list[dict[str, Any]], profile: str, target: float) -> None:
    """PS nodes needed against replicas, one line per link speed (the table beside it says where
    pushing every k steps was needed)."""
    from distinception.plots import line_plot

    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        series.setdefault(f"{row['link_gbps']:g} Gb/s", []).append(
            (row["replicas"], row["ps_nodes"])
        )
    line_plot(
        path,
        series,
        "replicas",
        "PS nodes needed",
        f"{profile}: the fewest PS nodes at {target:.0%} of ideal images/s",
        logx=True,
    )


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="simulate replicas, shards and links: the PS nodes N replicas need",
        description="A discrete-event model of the parameter server (distinception/plan/sim.py) "
        "run at cluster sizes this machine cannot hold. For each replica count and link speed: "
        "the fewest PS nodes (one shard per core) that keep the replicas at --target of the "
        "images/s they reach if they never wait, the staleness, and what saturates first.",
    )
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help="a shipped profile (h100-paper, cpu-demo) or a profile YAML file",
    )
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the profile here instead: a replica step of --recipe/--set's model and "
        "a shard's apply",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="the job --calibrate measures (default paper; --set data.classes=1000 sizes its "
        "head for ImageNet)",
    )
    p.add_argument("--config", default=None, help="a YAML file over the recipe (with --calibrate)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override (repeatable)")
    p.add_argument("--save-profile", metavar="FILE", help="write the profile used to FILE")
    p.add_argument(
        "--replicas",
        type=lambda t: _numbers(t, int, "--replicas", 1),
        default=None,
        help="replica counts (default 64,256,1024, or with --cluster the YAML's most replicas)",
    )
    p.add_argument(
        "--link-gbps",
        type=lambda t: _numbers(t, float, "--link-gbps", 0.001),
        default=[10.0, 25.0, 100.0],
        help="every node's NIC, each direction",
    )
    p.add_argument("--cores-per-ps-node", type=int, default=8)
    p.add_argument(
        "--cluster",
        metavar="YAML",
        help="a Ray cluster YAML: its PS nodes (node types with a `ps` resource), their CPUs and "
        "its most replicas; prints how many replicas those PS nodes hold",
    )
    p.add_argument("--target", type=float, default=0.9, help="share of ideal images/s (0-1]")
    p.add_argument("--stragglers", type=float, default=0.0, help="share of replicas slowed")
    p.add_argument("--straggler-factor", type=float, default=2.0)
    p.add_argument(
        "--step-cv",
        type=float,
        default=0.05,
        help="spread of a replica's step times (coefficient of variation; 0: all alike)",
    )
    p.add_argument("--preemptions-per-hour", type=float, default=0.0, help="per replica")
    p.add_argument("--restart-s", type=float, default=60.0)
    p.add_argument("--averager-interval-s", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    p.add_argument("--plot", metavar="PNG", help="also draw PS nodes needed against replicas")
    p.set_defaults(func=cmd_plan)
