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
import tempfile
import time
from datetime import date

import numpy as np
import ray
import torch

from distinception.config import JobConfig, ModelConfig, from_dict
from distinception.model.googlenet import build_model
from distinception.ps.actors import remote_replica, remote_shard
from distinception.ps.coordinator import Coordinator, Hooks
from distinception.ps.replica import ReplicaCore, build_flat_model, from_wire, to_wire
from distinception.recipes import get_recipe


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class DocsPatternPS:
    """The Ray docs' parameter server, written from its description: one actor holds a torch
    model, hands out `state_dict()` by value and applies gradients passed as a list."""

    def __init__(self, cfg: ModelConfig) -> None:
        torch.set_num_threads(1)
        self.model = build_model(cfg, 1000)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-4)

    def apply_gradients(self, *gradients: np.ndarray) -> dict[str, torch.Tensor]:
        for p, g in zip(self.model.parameters(), gradients, strict=True):
            p.grad = torch.from_numpy(g)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return self.get_weights()

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.cpu() for k, v in self.model.state_dict().items()}


def bench_p1(repeats: int, num_shards: int) -> dict[str, float]:
    model_cfg = ModelConfig(variant="faithful", width=1.0, input_size=224)
    cfg = from_dict(
        {
            "model": model_cfg.__dict__,
            "ps": {"num_shards": num_shards, "momentum": 0.0, "lr": 1e-4, "weight_decay": 0.0},
        },
        JobConfig(),
    )
    _, flat, _, layout = build_flat_model(cfg, 1000, seed=0)
    nbytes = layout.nbytes

    dst = torch.empty_like(flat)
    memcpy = _median_time(lambda: dst.copy_(flat), repeats)

    ranges = layout.shard_ranges(num_shards)
    init = [ray.put(flat[a:b].numpy().copy()) for a, b in ranges]
    shards = [
        remote_shard(cfg).remote(i, a, b, layout, [init[i]], cfg, 10**6, "", False)
        for i, (a, b) in enumerate(ranges)
    ]
    infos = ray.get([s.ready.remote() for s in shards])
    local = torch.empty_like(flat)
    grad = torch.full_like(flat, 1e-6)

    def round_trip() -> None:
        metas = ray.get([s.pull.remote() for s in shards])
        arrays = ray.get([m[2][0] for m in metas])
        for (a, b), arr in zip(ranges, arrays, strict=True):
            local[a:b].copy_(from_wire(arr))
        refs = [
            s.push.remote(
                to_wire(grad[a:b], "float32"), m[0], 32, layout.fingerprint, info["incarnation"]
            )
            for s, (a, b), m, info in zip(shards, ranges, metas, infos, strict=True)
        ]
        assert all(r["accepted"] for r in ray.get(refs))

    ours = _median_time(round_trip, repeats)
    for s in shards:
        ray.kill(s)

    docs_actor = ray.remote(DocsPatternPS).options(num_cpus=0.5).remote(model_cfg)
    ray.get(docs_actor.get_weights.remote())
    ref_model = build_model(model_cfg, 1000)
    grads = [np.full(p.shape, 1e-6, dtype=np.float32) for p in ref_model.parameters()]

    def docs_round_trip() -> None:
        weights = ray.get(docs_actor.apply_gradients.remote(*grads))
        ref_model.load_state_dict(weights)

    docs = _median_time(docs_round_trip, repeats)
    ray.kill(docs_actor)
    return {
        "bytes": nbytes,
        "memcpy_s": memcpy,
        "ours_s": ours,
        "docs_s": docs,
        "ours_vs_memcpy": ours / memcpy,
        "docs_vs_ours": docs / ours,
    }


def _local_rate(cfg: JobConfig, data: str, num_classes: int, steps: int) -> float:
    from distinception.data.loader import TrainStream

    torch.set_num_threads(max(1, int(cfg.ps.replica_cpus)))
    stream = TrainStream(
        data,
        consumer=0,
        num_consumers=1,
        batch_size=cfg.data.batch_size,
        recipe=cfg.recipe,
        input_size=cfg.model.input_size,
        seed=0,
    )
    core = ReplicaCore(cfg, num_classes, iter(stream))
    opt = torch.optim.SGD(core.model.parameters(), lr=cfg.ps.lr, momentum=cfg.ps.momentum)

    def step() -> None:
        core.compute(core.next_batch())
        opt.step()
        core.take_gradient()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.data.batch_size / (time.perf_counter() - t)


def bench_p2(steps: int) -> dict[str, float]:
    from distinception.data.generated import ensure_generated
    from distinception.data.shards import open_manifest

    cfg = from_dict(
        {"ps": {"num_replicas": 1, "num_shards": 2, "replica_cpus": 1.0}}, get_recipe("demo")
    )
    data = ensure_generated(cfg.data)
    num_classes = open_manifest(data).num_classes
    _, flat, _, layout = build_flat_model(cfg, num_classes, seed=0)
    ranges = layout.shard_ranges(cfg.ps.num_shards)
    init = [ray.put(flat[a:b].numpy().copy()) for a, b in ranges]
    shards = [
        remote_shard(cfg).remote(i, a, b, layout, [init[i]], cfg, 5000, "", False)
        for i, (a, b) in enumerate(ranges)
    ]
    ray.get([s.ready.remote() for s in shards])
    replica = remote_replica(cfg).remote(0, cfg, data, num_classes, shards, ranges, 1, None)
    ray.get(replica.train.remote(3))
    stats = ray.get(replica.train.remote(steps))
    replica_rate = stats["examples"] / stats["wall_s"]
    for a in [replica, *shards]:
        ray.kill(a)
    local_rate = _local_rate(cfg, data, num_classes, steps)
    return {
        "replica_img_s": replica_rate,
        "local_img_s": local_rate,
        "replica_vs_local": replica_rate / local_rate,
        "timings": stats["timings"],
    }


class _Clock(Hooks):
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
    result = Coordinator(cfg, clock).run()
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
    # Workers import this file's classes by module name.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
        try:
            p1 = bench_p1(repeats, args.shards)
            p2 = bench_p2(steps)
        finally:
            ray.shutdown()
    p4 = bench_p4() if args.p4 else None
    lines = [
        f"Measured {date.today()} on {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, ray {ray.__version__}, python {sys.version.split()[0]}.",
        f"Command: `python bench/bench_ps.py{' --quick' if args.quick else ''}"
        f"{' --p4' if args.p4 else ''} --shards {args.shards}`",
        "",
        "| benchmark | ours | baseline | ratio | goal |",
        "|---|---|---|---|---|",
        f"| P1 round trip, {p1['bytes'] / 2**20:.1f} MiB, {args.shards} shards, vs memcpy | "
        f"{1e3 * p1['ours_s']:.1f} ms | {1e3 * p1['memcpy_s']:.1f} ms | "
        f"{p1['ours_vs_memcpy']:.2f}x | <= 3x |",
        f"| P1 round trip vs Ray docs pattern (state_dict by value) | "
        f"{1e3 * p1['ours_s']:.1f} ms | {1e3 * p1['docs_s']:.1f} ms | "
        f"{p1['docs_vs_ours']:.2f}x faster | >= 3x |",
        f"| P2 one replica vs local loop (demo model, batch 32, 1 thread) | "
        f"{p2['replica_img_s']:.0f} img/s | {p2['local_img_s']:.0f} img/s | "
        f"{p2['replica_vs_local']:.2f} | >= 0.95 |",
        "",
        "Replica time split over the measured call: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in p2["timings"].items()),
    ]
    if p4 is not None:
        when = (
            f"{p4['reached_s']:.0f} s ({p4['reached_examples']:,} examples)"
            if p4["reached_s"] is not None
            else "not reached"
        )
        lines += [
            "",
            f"P4 demo recipe (`distinception train --recipe demo`, 2 shards, 2 replicas): Polyak "
            f"top-1 error <= {p4['target']:.0%} after {when}; final after {p4['seconds']:.0f} s "
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
