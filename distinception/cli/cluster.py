"""`submit` and `jobs`: job specs sent to a Ray cluster's Jobs API, and the jobs it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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


def add_parsers(sub: Any) -> None:
    """Add submit and jobs to the main command's subparsers `sub`."""
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
