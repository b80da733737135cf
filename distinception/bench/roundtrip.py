"""Parameter-server benchmarks, each a ratio measured side by side in one invocation.

P1: one pull + push round trip of the full-size flat GoogLeNet vector (faithful, 224, with aux
    heads: 13,378,280 floats) through our shard actors, against a plain memcpy of the same bytes
    and against the Ray docs' parameter-server pattern (one actor, weights handed out as a
    state_dict by value, gradients passed as a list of arrays).
P2: one replica's images/s through real actors against a local single-process loop with the same
    model, batch, data and threads.
P4: (with --p4) the demo recipe end to end: seconds until the Polyak weights first reach 25% top-1
    error on the generated set, and the final errors.

    python bench/bench_ps.py [--quick] [--p4] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import Counter
from datetime import date
from typing import Any

import numpy as np
import ray
import torch

from distinception import api
from distinception.bench.common import local_ray
from distinception.bench.docs_pattern import DocsParameterServer
from distinception.bench.throughput import run_local
from distinception.config import JobConfig, ModelConfig, from_dict
from distinception.data.generated import resolve_data
from distinception.model.archs import build_model
from distinception.ps import RPC_TIMEOUT_S, build_flat_model, shm
from distinception.ps.actors import ReplicaSpec, ShardSpec, remote_replica, remote_shard
from distinception.ps.transport.objstore import ShardLinks
from distinception.recipes import get_recipe


def _node_id(actor: object) -> str:
    return ray.get_runtime_context().get_node_id()


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_p1(
    repeats: int,
    num_shards: int,
    dtype: str = "float32",
    transport: str = "auto",
    shard_resources: dict[str, float] | None = None,
    docs: bool = True,
) -> dict[str, float]:
    """One pull + push round trip through real shard actors by the replicas' own transport
    (`ShardLinks`: shared memory and doorbells on one node, else the object store and Ray
    calls), against a memcpy of the same bytes and (`docs`) the Ray docs pattern.
    `shard_resources` places the shards as `placement.shard_resources` does in a job."""
    model_cfg = ModelConfig(variant="faithful", width=1.0, input_size=224)
    cfg = from_dict(
        {
            "model": model_cfg.__dict__,
            "ps": {"num_shards": num_shards},
            "optim": {"momentum": 0.0, "lr": 1e-4, "weight_decay": 0.0},
            "transport": {"transfer_dtype": dtype, "channel": transport},
            "placement": {"shard_cpus": 0.25, "shard_resources": shard_resources or {}},
        },
        JobConfig(),
    )
    _, flat, _, layout = build_flat_model(cfg.model, 1000, seed=0)
    # A plain memcpy: numpy's copy is one thread, as a replica's copies are (its torch is held
    # to one thread; this driver's torch keeps its default).
    src, dst = flat.numpy(), np.empty_like(flat.numpy())
    memcpy_times: list[float] = []

    def memcpy() -> None:
        t = time.perf_counter()
        np.copyto(dst, src)
        memcpy_times.append(time.perf_counter() - t)

    ranges = layout.shard_ranges(num_shards)
    init = [ray.put(flat[a:b].numpy().copy()) for a, b in ranges]
    shm_dir = shm.job_dir() if transport == "auto" and shm.available() else ""
    shards = [
        remote_shard(cfg).remote(
            ShardSpec(i, a, b, layout, cfg, examples_per_epoch=10**6, shm_dir=shm_dir), [init[i]]
        )
        for i, (a, b) in enumerate(ranges)
    ]
    ray.get([s.ready.remote() for s in shards], timeout=RPC_TIMEOUT_S)
    here = ray.get_runtime_context().get_node_id()
    nodes = ray.get([s.__ray_call__.remote(_node_id) for s in shards], timeout=RPC_TIMEOUT_S)
    links = ShardLinks(shards, ranges, transport, lambda _: None)
    links.attach()
    slot = (
        shm.SharedVector(os.path.join(shm_dir, "replica-0-bench.g"), layout.total, create=True)
        if links.shm_dir
        else None
    )
    local = torch.empty_like(flat)
    # A CPU replica's backward accumulates straight into a shared-memory slot, so the gradient
    # starts there; through the object store it starts in the replica's own memory.
    grad = slot.values if slot is not None else torch.empty_like(flat)
    grad.fill_(1e-6)
    parts: dict[str, list[float]] = {"pull": [], "push": []}

    def load(a: int, b: int, values: torch.Tensor) -> None:
        local[a:b].copy_(values)

    def round_trip() -> None:
        memcpy()  # beside every round trip, so both see the same machine
        t0 = time.perf_counter()
        links.finish(links.issue(), load)
        t1 = time.perf_counter()
        refs, answers = links.push(
            grad,
            slot.path if slot is not None else "",
            links.versions,
            links.incarnations,
            32,
            layout.fingerprint,
            dtype,
        )
        results = answers + ray.get(refs, timeout=RPC_TIMEOUT_S)
        assert all(r is not None and r["accepted"] for r in results), results
        t2 = time.perf_counter()
        parts["pull"].append(t1 - t0)
        parts["push"].append(t2 - t1)

    try:
        for _ in range(2 + repeats):  # two to warm up, then the measured ones
            round_trip()
        shared = sum(v is not None for v in links.shared)
    finally:
        for s in shards:
            ray.kill(s)
        if slot is not None:
            slot.close()
        shm.remove(shm_dir)

    memcpy_s = statistics.median(memcpy_times[2:])
    ours = statistics.median(
        a + b for a, b in zip(parts["pull"][2:], parts["push"][2:], strict=True)
    )
    result = {
        "bytes": layout.nbytes,
        "wire_bytes": layout.total * (2 if dtype == "bfloat16" else 4),
        "shared_shards": shared,
        "shard_nodes": len(set(nodes)),
        "shards_elsewhere": sum(n != here for n in nodes),
        "memcpy_s": memcpy_s,
        "ours_s": ours,
        "ours_vs_memcpy": ours / memcpy_s,
        **{f"{k}_s": statistics.median(v[2:]) for k, v in parts.items()},
    }
    if not docs:
        return result
    docs_actor = ray.remote(DocsParameterServer).options(num_cpus=0.5).remote(cfg, 1000, 10**6)
    ray.get(docs_actor.get_weights.remote(), timeout=RPC_TIMEOUT_S)
    ref_model = build_model(model_cfg, 1000)
    grads = [np.full(p.shape, 1e-6, dtype=np.float32) for p in ref_model.parameters()]

    def docs_round_trip() -> None:
        weights = ray.get(docs_actor.apply_gradients.remote(grads), timeout=RPC_TIMEOUT_S)
        ref_model.load_state_dict(weights)

    docs_s = _median_time(docs_round_trip, repeats)
    ray.kill(docs_actor)
    return result | {"docs_s": docs_s, "docs_vs_ours": docs_s / ours}


def bench_p2(steps: int, rounds: int = 3) -> dict[str, Any]:
    """Replica and local loop measured alternately `rounds` times; medians of each."""
    cfg = from_dict(
        {"ps": {"num_replicas": 1, "num_shards": 2}, "placement": {"replica_cpus": 1.0}},
        get_recipe("demo"),
    )
    data, num_classes, train_examples = resolve_data(cfg)
    _, flat, _, layout = build_flat_model(cfg.model, num_classes, seed=0)
    ranges = layout.shard_ranges(cfg.ps.num_shards)
    init = [ray.put(flat[a:b].numpy().copy()) for a, b in ranges]
    shm_dir = shm.job_dir() if shm.available() else ""  # the default transport, as in `train`
    shards = [
        remote_shard(cfg).remote(
            ShardSpec(i, a, b, layout, cfg, examples_per_epoch=train_examples, shm_dir=shm_dir),
            [init[i]],
        )
        for i, (a, b) in enumerate(ranges)
    ]
    ray.get([s.ready.remote() for s in shards], timeout=RPC_TIMEOUT_S)
    replica = remote_replica(cfg).remote(
        ReplicaSpec(0, cfg, data, num_classes, tuple(shards), tuple(ranges), num_consumers=1)
    )
    ray.get(replica.train.remote(3), timeout=RPC_TIMEOUT_S)
    replica_rates, local_rates, timings = [], [], Counter()
    try:
        for _ in range(rounds):
            stats = ray.get(replica.train.remote(steps), timeout=10 * RPC_TIMEOUT_S)
            replica_rates.append(stats["examples"] / stats["wall_s"])
            timings.update(stats["timings"])
            local_rates.append(run_local(cfg, data, num_classes, steps)["images_per_s"])
    finally:
        for a in [replica, *shards]:
            ray.kill(a)
        shm.remove(shm_dir)
    r, loc = statistics.median(replica_rates), statistics.median(local_rates)
    return {
        "replica_img_s": r,
        "local_img_s": loc,
        "replica_vs_local": r / loc,
        "pairs": [a / b for a, b in zip(replica_rates, local_rates, strict=True)],
        "timings": dict(timings),
    }


class _Clock(api.Callback):
    """Notes the wall-clock time of every evaluation (no MLflow)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.evals: list[tuple[float, int, float, float]] = []

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "polyak_top1_error" in metrics:
            self.evals.append(
                (
                    time.perf_counter() - self.t0,
                    step,
                    metrics["raw_top1_error"],
                    metrics["polyak_top1_error"],
                )
            )


def bench_p4(target: float = 0.25) -> dict[str, object]:
    cfg = from_dict({"run": {"progress": False, "eval_interval_s": 15.0}}, get_recipe("demo"))
    clock = _Clock()
    result = api.train(cfg, callbacks=[clock], track=False)
    reached = next((e for e in clock.evals if e[3] <= target), None)
    return {
        "target": target,
        "reached_s": reached[0] if reached else None,
        "reached_examples": reached[1] if reached else None,
        "seconds": result.seconds,
        "examples": result.examples,
        "raw": result.final["raw_top1_error"],
        "polyak": result.final["polyak_top1_error"],
        "evals": clock.evals,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--p4", action="store_true", help="also time the demo to 25%% error")
    parser.add_argument("--out", default=None, help="write a markdown table here")
    args = parser.parse_args(argv)
    repeats, steps = (5, 30) if args.quick else (15, 120)
    kinds = {
        "same node (shared memory), fp32": ("auto", "float32"),
        "across nodes (object store), fp32": ("object_store", "float32"),
        "across nodes (object store), bf16 transfer": ("object_store", "bfloat16"),
    }
    with local_ray():
        p1s = {name: bench_p1(repeats, args.shards, d, t) for name, (t, d) in kinds.items()}
        p2 = bench_p2(steps)
    p4 = bench_p4() if args.p4 else None
    mib = next(iter(p1s.values()))["bytes"] / 2**20
    lines = [
        f"Measured {date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, ray {ray.__version__}, python {sys.version.split()[0]}.",
        f"Command: `python bench/bench_ps.py{' --quick' if args.quick else ''}"
        f"{' --p4' if args.p4 else ''} --shards {args.shards}`",
        "",
        f"P1: one pull + push round trip of the full flat GoogLeNet vector ({mib:.1f} MiB), "
        f"{args.shards} shards; memcpy is a one-thread copy of the same fp32 bytes, measured "
        "beside each row.",
        "",
        "| benchmark | ours | baseline | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for name, p1 in p1s.items():
        lines += [
            f"| P1 {name} vs memcpy | {1e3 * p1['ours_s']:.1f} ms | "
            f"{1e3 * p1['memcpy_s']:.1f} ms | {p1['ours_vs_memcpy']:.2f}x | <= 3x |",
            f"| P1 {name} vs Ray docs pattern (fp32 state_dict by value) | "
            f"{1e3 * p1['ours_s']:.1f} ms | {1e3 * p1['docs_s']:.1f} ms | "
            f"{p1['docs_vs_ours']:.2f}x faster | >= 3x |",
        ]
    lines += [
        f"| P2 one replica vs local loop (demo model, batch 32, 1 thread) | "
        f"{p2['replica_img_s']:.0f} img/s | {p2['local_img_s']:.0f} img/s | "
        f"{p2['replica_vs_local']:.2f} | >= 0.95 |",
        "",
        "P1 round trip split (median ms, pull / push): "
        + "; ".join(
            f"{name} {1e3 * p1['pull_s']:.1f} / {1e3 * p1['push_s']:.1f}"
            for name, p1 in p1s.items()
        ),
        "",
        "P2 replica / local per round: "
        + ", ".join(f"{r:.2f}" for r in p2["pairs"])
        + "; replica time split over all rounds: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in p2["timings"].items()),
    ]
    if p4 is not None:
        when = (
            f"after {p4['reached_s']:.0f} s ({p4['reached_examples']:,} examples)"
            if p4["reached_s"] is not None
            else "not reached within the recipe's budget"
        )
        lines += [
            "",
            f"P4 demo recipe (`distinception train --recipe demo`, 2 shards, 2 replicas): Polyak "
            f"top-1 error <= {p4['target']:.0%} {when}; final after {p4['seconds']:.0f} s "
            f"and {p4['examples']:,} examples: raw {p4['raw']:.1%}, Polyak {p4['polyak']:.1%}.",
            "",
            "| seconds | examples | raw top-1 error | Polyak top-1 error |",
            "|---:|---:|---:|---:|",
            *(f"| {t:.0f} | {n:,} | {r:.1%} | {p:.1%} |" for t, n, r, p in p4["evals"]),
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
