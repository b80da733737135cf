"""`distinception bench nodes`: the parameter server across node boundaries, on a Ray cluster of
three nodes on this machine, and `distinception plan`'s model held against what it measures.

The cluster: a head that holds the driver and the replicas (resource `replica`), and two PS
nodes (resource `ps`, and `ps-node-0` / `ps-node-1` to pin to one). Each node has its own raylet
and object store, so a replica reaches a shard through Ray's object manager as it would across
machines; the bytes cross the loopback interface rather than a NIC, and all three nodes share
this machine's cores.

(1) Round trip (P1c): one pull + push of the full faithful GoogLeNet vector by the replicas' own
    transport (`bench_p1`), shards on one PS node and spread over two, fp32 and bf16 on the
    wire; beside it a memcpy of the same fp32 bytes and Ray's own floor, one object of the
    same bytes fetched from and sent to an actor on a PS node.
(2) Throughput: training jobs with N replicas against shards on one PS node, then spread over
    two: images/s, updates/s, the staleness the shards measured, and each replica's busy and
    waiting time per step.
(3) The model: `plan`'s simulator predicts each run of (2) from costs measured here: the run's
    busy time per step, the shard's apply as `plan --calibrate` measures it, and a link (a
    latency per message and a bandwidth) fitted through Ray's cross-node transfer of one
    object of a job's message and of the faithful vector. The table shows where it errs, and
    the fitted costs are written as a profile `distinception plan --profile` reads.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from distinception.bench.common import header, machine, markdown_table, source_root
from distinception.bench.throughput import run_ps, steady_rates
from distinception.config import JobConfig, from_dict
from distinception.plan.sim import Profile, Setup, simulate
from distinception.plots import line_plot
from distinception.ps import histogram_mean
from distinception.recipes import get_recipe

STORE_BYTES = 400 * 1024 * 1024
PS_NODES = 2
P1_SHARDS = 4
PROFILE = "nodes-profile.yaml"
LAYOUTS = {"1 PS node": {"ps-node-0": 1.0}, "2 PS nodes": {"ps": 1.0}}


@contextlib.contextmanager
def fake_cluster(ps_nodes: int = PS_NODES, head_cpus: int = 2) -> Iterator[tuple[Any, list]]:
    """A head (the driver and the replicas) and `ps_nodes` PS nodes, each its own raylet and
    object store on this machine; this process is connected to it, and all of it is stopped
    afterwards. Yields the `ray.cluster_utils.Cluster` and its PS nodes."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": head_cpus,
            "resources": {"replica": 64},
            "object_store_memory": STORE_BYTES,
            "include_dashboard": False,
        },
    )
    try:
        nodes = [
            cluster.add_node(
                num_cpus=1,
                resources={"ps": 8, f"ps-node-{i}": 8},
                object_store_memory=STORE_BYTES,
            )
            for i in range(ps_nodes)
        ]
        ray.init(
            address=cluster.address,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": source_root()}},
        )
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


class _Far:
    """An actor on a PS node that hands out and takes one object of `n` bytes: what Ray's
    object manager alone costs across nodes, with no shard work."""

    def __init__(self, n: int) -> None:
        self.values = np.ones(n // 4, dtype=np.float32)

    def pull(self) -> np.ndarray:
        return self.values

    def push(self, values: np.ndarray) -> int:
        return int(values.nbytes)


def ray_floor(nbytes: int, repeats: int, resources: dict[str, float]) -> dict[str, float]:
    """Median seconds of fetching one `nbytes` object from an actor placed by `resources` into a
    reused buffer here, and of sending one to it (answered once it arrived)."""
    import ray

    actor = ray.remote(_Far).options(num_cpus=0.1, resources=resources).remote(nbytes)
    buffer = np.empty(nbytes // 4, dtype=np.float32)
    sent = np.full(nbytes // 4, 1e-6, dtype=np.float32)
    times: dict[str, list[float]] = {"pull": [], "push": []}
    try:
        for _ in range(2 + repeats):
            t0 = time.perf_counter()
            np.copyto(buffer, ray.get(actor.pull.remote(), timeout=300))
            t1 = time.perf_counter()
            ray.get(actor.push.remote(sent), timeout=300)
            t2 = time.perf_counter()
            times["pull"].append(t1 - t0)
            times["push"].append(t2 - t1)
    finally:
        ray.kill(actor)
    return {f"{k}_s": statistics.median(v[2:]) for k, v in times.items()}


def round_trips(repeats: int, dtypes: tuple[str, ...]) -> dict[tuple, dict]:
    """P1c for each PS-node layout and wire dtype, and Ray's floor for the same bytes."""
    from distinception.bench.roundtrip import bench_p1

    out: dict[tuple, dict] = {}
    for layout, resources in LAYOUTS.items():
        for dtype in dtypes:
            p1 = bench_p1(repeats, P1_SHARDS, dtype, "object_store", resources, docs=False)
            floor = ray_floor(p1["wire_bytes"], repeats, {"ps-node-0": 1.0})
            out[layout, dtype] = p1 | {f"floor_{k}": v for k, v in floor.items()}
    return out


def fit_link(small: tuple[int, float], large: tuple[int, float]) -> tuple[float, float]:
    """(Gb/s, seconds of latency) of the line `seconds = latency + bytes / bandwidth` through
    two (bytes, seconds) transfers of one object; a bandwidth of at least 0.1 Gb/s."""
    (b1, t1), (b2, t2) = small, large
    per_byte = max((t2 - t1) / (b2 - b1), 0.0)
    gbps = 8 / 1e9 / per_byte if per_byte > 0 else 1e3
    gbps = max(gbps, 0.1)
    return gbps, max(0.0, t1 - b1 * 8 / 1e9 / gbps)


def job_config(recipe: str, replicas: int, layout: str, head_cpus: int = 2) -> JobConfig:
    """`recipe` with `replicas` replicas sharing the head's CPUs and its shards and averager on
    the PS nodes of `layout`."""
    base = get_recipe(recipe)
    per = min(base.placement.replica_cpus, round(head_cpus / replicas - 5e-4, 3))
    return from_dict(
        {
            "ps": {"num_replicas": replicas},
            "transport": {"channel": "object_store"},
            "placement": {
                "replica_cpus": per,
                "replica_resources": {"replica": 1.0},
                "shard_resources": LAYOUTS[layout],
            },
        },
        base,
    )


def per_step(result: Any) -> tuple[float, float]:
    """(busy, waiting) seconds of a replica per step, over every call of every replica. Busy is
    everything but waiting for weights: data, compute, handing the push over."""
    totals = [s["totals"] for s in result.replica_stats.values()]
    steps = max(1, sum(t["steps"] for t in totals))
    waited = sum(t.get("pull_wait_s", 0.0) for t in totals)
    return (sum(t["wall_s"] for t in totals) - waited) / steps, waited / steps


def predict(
    profile: Profile, cfg: JobConfig, step_s: float, ps_nodes: int, link_gbps: float
) -> dict[str, float]:
    """The simulator's images/s and mean staleness for one measured run."""
    setup = Setup(
        replicas=cfg.ps.num_replicas,
        shards=cfg.ps.num_shards,
        ps_nodes=ps_nodes,
        link_gbps=link_gbps,
        max_lag=cfg.ps.lag,
        n_push=cfg.ps.n_push,
    )
    sim = simulate(replace(profile, step_s=step_s), setup)
    return {"images_per_s": sim.images_per_s, "staleness": sim.staleness_stats()["mean"]}


def run_nodes(
    replicas: tuple[int, ...] = (1, 2, 4, 8),
    quick: bool = False,
    out_dir: str = "bench/results",
    recipe: str = "demo",
    seconds: float | None = None,
) -> dict[str, Any]:
    """Measure (1)-(3) on a fake three-node cluster; write nodes.md and nodes.png."""
    from distinception.plan.profiles import calibrate, save_profile

    cmd = f"distinception bench nodes --replicas {','.join(map(str, replicas))}"
    cmd += " --quick" if quick else ""
    cmd += f" --recipe {recipe}" if recipe != "demo" else ""
    cmd += f" --seconds {seconds:g}" if seconds else ""
    seconds = seconds or (8.0 if quick else 40.0)
    repeats, dtypes = (2, ("float32",)) if quick else (9, ("float32", "bfloat16"))
    info = machine()
    t0 = time.perf_counter()
    with fake_cluster():
        trips = round_trips(repeats, dtypes)
        configs = {(at, n): job_config(recipe, n, at) for at in LAYOUTS for n in replicas}
        runs = {key: run_ps(cfg, seconds)["result"] for key, cfg in configs.items()}
        base = job_config(recipe, 1, "1 PS node")
        profile = calibrate(base, name=f"{recipe}-fake-cluster")
        # One message of a job: a shard's slice of the gradient or of the weights.
        message = profile.params * profile.wire_bytes // base.ps.num_shards
        small = ray_floor(message, 4 * repeats, LAYOUTS["1 PS node"])
    wall = time.perf_counter() - t0

    fp32 = trips["1 PS node", "float32"]
    link_gbps, latency_s = fit_link(
        (message, (small["pull_s"] + small["push_s"]) / 2),
        (fp32["wire_bytes"], (fp32["floor_pull_s"] + fp32["floor_push_s"]) / 2),
    )
    profile = replace(
        profile,
        rpc_s=round(latency_s, 6),
        source=f"`{cmd}`: {profile.source.split(': ', 1)[-1]}; rpc_s fitted to Ray's "
        "cross-node object transfers on the fake cluster",
    )
    trip_rows = []
    for (layout, dtype), p in trips.items():
        mib = p["wire_bytes"] / 2**20
        trip_rows.append(
            [
                layout,
                f"{p['shard_nodes']} ({p['shards_elsewhere']} of {P1_SHARDS} off the head)",
                "bf16" if dtype == "bfloat16" else "fp32",
                f"{1e3 * p['pull_s']:.0f} / {1e3 * p['push_s']:.0f}",
                f"{mib / p['pull_s']:.0f} / {mib / p['push_s']:.0f}",
                f"{1e3 * p['ours_s']:.0f}",
                f"{p['ours_vs_memcpy']:.1f}x",
                f"{1e3 * p['floor_pull_s']:.0f} / {1e3 * p['floor_push_s']:.0f}",
                f"{(p['floor_pull_s'] + p['floor_push_s']) / p['memcpy_s']:.1f}x",
            ]
        )
    run_rows, measured, modelled = [], {}, {}
    batch = base.data.batch_size
    steps = {key: per_step(result) for key, result in runs.items()}
    for (layout, n), result in runs.items():
        images, updates = steady_rates(result)
        stale = histogram_mean(result.staleness_hist)
        step_s, wait_s = steps[layout, n]
        ps_nodes = 1 if layout == "1 PS node" else PS_NODES
        model = predict(profile, configs[layout, n], step_s, ps_nodes, link_gbps)
        run_rows.append(
            [
                layout,
                n,
                f"{images:.0f}",
                f"{updates:.1f}",
                f"{1e3 * step_s:.0f}",
                f"{1e3 * wait_s:.0f}",
                f"{1e3 * max(0.0, n * batch / model['images_per_s'] - step_s):.0f}",
                f"{stale:.2f}",
                f"{model['images_per_s']:.0f}",
                f"{model['images_per_s'] / images:.2f}" if images else "n/a",
                f"{model['staleness']:.2f}",
                f"{model['staleness'] / stale:.2f}" if stale else "n/a",
            ]
        )
        measured.setdefault(f"measured, {layout}", []).append((n, images))
        modelled.setdefault(f"model, {layout}", []).append((n, model["images_per_s"]))
    os.makedirs(out_dir, exist_ok=True)
    single = next(busy for (_, n), (busy, _) in steps.items() if n == min(replicas))
    save_profile(replace(profile, step_s=round(single, 6)), f"{out_dir}/{PROFILE}")
    png = line_plot(
        os.path.join(out_dir, "nodes.png"),
        measured | modelled,
        "replicas",
        "images/s",
        f"{recipe} model, a three-node Ray cluster on one machine",
    )
    lines = [
        *header(cmd, info),
        "A Ray cluster of three nodes on this machine (head: driver and replicas; two PS "
        "nodes), each its own raylet and object store; bytes between nodes go through Ray's "
        f"object manager over loopback. Whole run {wall:.0f} s.",
        "",
        f"Round trip (P1c): one pull + push of the full faithful GoogLeNet vector "
        f"({fp32['bytes'] / 2**20:.1f} MiB in fp32), {P1_SHARDS} shards, median of {repeats}; "
        f"memcpy is a one-thread copy of the fp32 bytes ({1e3 * fp32['memcpy_s']:.1f} ms); "
        "Ray's floor is one object of the same bytes fetched from and sent to an actor on a "
        "PS node.",
        "",
        *markdown_table(
            [
                "shards on",
                "nodes used",
                "wire",
                "pull / push ms",
                "MiB/s pull / push",
                "round trip ms",
                "vs memcpy (goal <= 4x)",
                "Ray floor pull / push ms",
                "floor vs memcpy",
            ],
            trip_rows,
        ),
        "",
        f"Throughput: recipe `{recipe}`, {base.ps.num_shards} shards, {seconds:g} s per run, "
        "rates after start-up. Busy is a replica's own time per step (all but waiting for "
        "weights) and wait the rest, over every call of every replica. The model is `distinception "
        "plan`'s simulator given each run's busy time, "
        "the shard's apply as `plan --calibrate` measures it here "
        f"({1e3 * profile.apply_fixed_s:.2f} ms per push + {1e3 * profile.apply_s_per_mib:.2f} "
        f"ms per MiB), and links of {link_gbps:.1f} Gb/s with {1e3 * latency_s:.1f} ms per "
        "message: the line through Ray's cross-node transfer of one object of a job's message "
        f"(a shard's slice, {message / 2**20:.2f} MiB: {1e3 * small['pull_s']:.1f} / "
        f"{1e3 * small['push_s']:.1f} ms pull / push) and of the faithful vector (the floor "
        "above); its wait is its time per step less the busy time. The profile is in "
        f"`{PROFILE}` (`distinception plan --profile {PROFILE}`).",
        "",
        *markdown_table(
            [
                "shards on",
                "replicas",
                "images/s",
                "updates/s",
                "busy ms/step",
                "wait ms/step",
                "model wait",
                "staleness",
                "model images/s",
                "model / measured",
                "model staleness",
                "model / measured",
            ],
            run_rows,
        ),
        "",
        f"![nodes]({os.path.basename(png)})",
    ]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "nodes.md"), "w") as f:
        f.write(text + "\n")
    return {"text": text, "png": png, "trips": trips, "runs": runs, "link_gbps": link_gbps}
