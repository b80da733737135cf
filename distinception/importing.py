"""`data import --engine ray`: the importer's shard tasks run by Ray Data across a cluster.

The plan, the checks, the shard files and the manifest are the importer's own
(`distinception.data.importer`), so both engines write the same set from the same tree and skip
the same files. What Ray adds is where the tasks run: one task per shard, scheduled by Ray
Data's streaming executor on every node with a free CPU (nodes the autoscaler adds included),
retried by Ray if a node dies, and collected here as they finish. Each task reads its files from
`src` and writes its shard to `out` itself, so on a multi-node cluster both must be reachable
from every node: a bucket (`s3://...`) or a shared mount, never one machine's disk.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from distinception.data.importer import (
    ImportPlan,
    ImportReport,
    ShardResult,
    ShardTask,
    import_shard,
    plan_import,
    run_import,
)
from distinception.data.shards import DataError
from distinception.ps.session import ray_session


def _import_row(
    row: dict[str, Any], *, src: str, out: str, num_classes: int, row_group_rows: int
) -> dict[str, Any]:
    # A task's one-line error (a vanished tree, an output that cannot be written) comes back
    # as data: raised, it would reach the driver wrapped in Ray's exceptions and tracebacks.
    try:
        result = import_shard(src, out, ShardTask.from_row(row), num_classes, row_group_rows)
    except DataError as err:
        return {"result": "", "error": str(err)}
    return {"result": result.to_json(), "error": ""}


def _run_on_ray(plan: ImportPlan, cpus_per_task: float) -> Iterator[ShardResult]:
    import ray.data

    todo = plan.todo
    if not todo:
        return
    # The importer shows one bar, in images; Ray Data's own notices stay in the session logs.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    # One block per task, so each shard is its own unit of scheduling across the nodes.
    tasks = ray.data.from_items([t.to_row() for t in todo], override_num_blocks=len(todo))
    results = tasks.map(
        _import_row,
        fn_kwargs={
            "src": plan.src,
            "out": plan.out,
            "num_classes": len(plan.classes),
            "row_group_rows": plan.row_group_rows,
        },
        num_cpus=cpus_per_task,
    )
    for row in results.iter_rows():
        if row["error"]:
            raise DataError(row["error"])
        yield ShardResult.from_json(row["result"])


def import_tree_on_ray(
    src: str,
    out: str,
    *,
    address: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_rows: int = 2048,
    cpus_per_task: float = 1.0,
    progress: bool = True,
) -> ImportReport:
    """Import `src` into `out` with the shard tasks spread over the Ray cluster at `address`
    (or the job's cluster, or a local Ray started for the import). Same arguments and same
    result as `import_tree`; an interrupted run resumes the same way."""
    planned = plan_import(src, out, val_fraction=val_fraction, seed=seed, shard_rows=shard_rows)
    with ray_session(address):
        return run_import(planned, _run_on_ray(planned, cpus_per_task), "ray", progress)


__all__ = ["import_tree_on_ray"]
