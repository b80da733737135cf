"""The Ray a job runs on: joined when there is one, else started here and shut down afterwards.

Training, sweeps, ensembles and benchmarks all start Ray through this module, so they agree on
what a local Ray is (no dashboard, token auth on, the driver's logs kept out of the terminal)
and on when it is shut down (only by whoever started it).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import ray


def init_ray(address: str | None, **local: Any) -> bool:
    """Connect to `address`, or start a local Ray (no dashboard, token auth on); True if started.

    Inside a Ray job `RAY_ADDRESS` names the job's cluster: it is joined even when the command
    gave no `--address` (starting a local Ray there fails: a connection takes no `num_cpus`).
    `local` are `ray.init` options for a local start only (CPUs, a private temp dir, a runtime
    environment)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Ray's start-up notices (the local instance started, connected to a cluster, token auth on
    # as we ask) are not the user's business; its errors still show, and its session logs keep
    # everything.
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
        return False
    options: dict[str, Any] = {
        "num_cpus": max(2, os.cpu_count() or 2),
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.ERROR,
    }
    try:
        ray.init(**(options | local))
    except Exception as err:
        # Ray gives its raylet a fixed 30 s to register with the GCS; a machine busy with other
        # work can miss that once. One more try; any other failure is the user's to see.
        if "timed out during startup" not in str(err):
            raise
        ray.shutdown()
        ray.init(**(options | local))
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, **local: Any) -> Iterator[bool]:
    """Ray for the duration of a job (see `init_ray`); yields whether it was started here, and
    shuts down only a Ray it started, so a caller's own Ray outlives the job."""
    started = init_ray(address, **local)
    try:
        yield started
    finally:
        if started:
            ray.shutdown()


__all__ = ["init_ray", "ray_session"]
