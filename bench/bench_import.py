"""Import benchmark: images/s of `data import` on the local engine against `--engine ray`.

A tree of N generated JPEGs (default 50,000 at 320x240, 100 classes, written once and kept) is
imported by the command a user types, each time into a fresh output:

- `--engine local` (a pool of `--workers` processes on this machine);
- `--engine ray` on a plain local Ray (one node with every core);
- `--engine ray` on the fake multi-node cluster of `cluster/local.yaml` (a head with 1 CPU and
  1-CPU worker nodes the autoscaler adds), with 1 node and with 2 nodes.

Then it times the per-image check alone (read, decode, store) at ImageNet's typical size, which
with the CPU count of a cluster's worker type estimates a whole ImageNet import.

    python bench/bench_import.py [--images N] [--size WxH] [--tree DIR] [--out results.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXE = str(BIN / "distinception")
#: ImageNet's training set, for the estimate: images and their typical size.
IMAGENET_IMAGES = 1_281_167
IMAGENET_SIZE = (500, 375)


def _picture(index: int, size: tuple[int, int]) -> bytes:
    """A JPEG with photo-like structure (smooth fields plus fine noise), so its size and decode
    cost resemble a photo's, not a flat test card's."""
    rng = np.random.default_rng(index)
    w, h = size
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _write_some(args: tuple[str, list[int], int, tuple[int, int]]) -> int:
    root, indices, classes, size = args
    for i in indices:
        folder = Path(root) / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:06d}.jpg").write_bytes(_picture(i, size))
    return len(indices)


def generate_tree(root: Path, images: int, classes: int, size: tuple[int, int]) -> Path:
    """The tree, written once: a marker file names what it holds, so a rerun reuses it."""
    marker = root / ".complete"
    want = json.dumps({"images": images, "classes": classes, "size": size})
    if marker.exists() and marker.read_text() == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    workers = os.cpu_count() or 2
    parts = [
        (str(root), list(range(k, images, workers * 4)), classes, size) for k in range(workers * 4)
    ]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(_write_some, parts))
    marker.write_text(want)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeCluster:
    """`cluster/local.yaml` started as a user does (`ray start --head --autoscaling-config`),
    limited to `nodes` nodes; stopped by SIGTERM to its processes, never `ray stop`."""

    def __init__(self, nodes: int) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="dbench-", dir="/tmp")
        port = _free_port()
        config = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
        config["provider"]["gcs_address"] = f"127.0.0.1:{port}"
        config["max_workers"] = nodes - 1
        config["available_node_types"]["replica_node"]["max_workers"] = nodes - 1
        path = Path(self.temp_dir) / "local.yaml"
        path.write_text(yaml.safe_dump(config))
        self.address = f"127.0.0.1:{port}"
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=secrets.token_hex(32),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_FAKE_CLUSTER="1",
            AUTOSCALER_UPDATE_INTERVAL_S="1",
            PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        )
        self.proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                f"--port={port}",
                f"--temp-dir={self.temp_dir}",
                "--num-cpus=1",
                '--resources={"ps": 8}',
                "--include-dashboard=false",
                f"--ray-client-server-port={_free_port()}",
                f"--autoscaling-config={path}",
                "--block",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_for_nodes(nodes)

    def _wait_for_nodes(self, nodes: int, timeout: float = 180) -> None:
        """Ask the autoscaler for `nodes` CPUs (one per node) and wait until they are up, so
        the timing is of a cluster of that size, not of its scaling up."""
        script = (
            "import ray, time\n"
            f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
            "from ray.autoscaler.sdk import request_resources\n"
            f"request_resources(num_cpus={nodes})\n"
            f"deadline = time.monotonic() + {timeout}\n"
            f"while len([n for n in ray.nodes() if n['Alive']]) < {nodes}:\n"
            "    assert time.monotonic() < deadline, 'nodes did not join'\n"
            "    time.sleep(1)\n"
            "request_resources(bundles=[])\n"
        )
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run([sys.executable, "-c", script], env=self.env, capture_output=True)
            if done.returncode == 0:
                return
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"fake cluster not ready: {done.stderr.decode()[-800:]}")
            time.sleep(2)

    def _pids(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if self.temp_dir.encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self._pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(5)
        self.proc.wait(timeout=30)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def run_import(tree: Path, out: Path, args: list[str], env: dict | None = None) -> dict:
    """`distinception data import TREE --out OUT ARGS` as typed; wall seconds and what it wrote."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [EXE, "data", "import", str(tree), "--out", str(out), *args],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    read = int(re.search(r"files read: (\d+)", proc.stdout).group(1))
    written = sum(int(n) for n in re.findall(r": (\d+) images written", proc.stdout))
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": wall, "read": read, "written": written, "img_s": read / wall}


def check_cost(images: int = 300) -> float:
    """Seconds of one core per image for the importer's check of ImageNet-sized JPEGs."""
    import torch

    from distinception.data.importer import check_image

    torch.set_num_threads(1)
    blobs = [_picture(10_000_000 + i, IMAGENET_SIZE) for i in range(images)]
    start = time.perf_counter()
    for blob in blobs:
        check_image(blob)
    return (time.perf_counter() - start) / images


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--size", default="320x240")
    p.add_argument("--tree", default=str(Path.home() / ".cache" / "distinception" / "import-bench"))
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", default=None, help="also write the table here")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    t0 = time.perf_counter()
    tree = generate_tree(Path(args.tree), args.images, args.classes, size)
    generated = time.perf_counter() - t0
    out = Path(tempfile.mkdtemp(prefix="import-bench-")) / "set"
    rows = []
    plain = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    rows.append(
        (
            "local engine",
            f"{args.workers} processes, 1 node",
            run_import(tree, out, ["--workers", str(args.workers)], plain),
        )
    )
    rows.append(
        (
            "ray engine, plain local Ray",
            f"{os.cpu_count()} CPUs, 1 node",
            run_import(tree, out, ["--engine", "ray"], plain),
        )
    )
    for nodes in (1, 2):
        cluster = FakeCluster(nodes)
        try:
            result = run_import(
                tree, out, ["--engine", "ray", "--address", cluster.address], cluster.env
            )
        finally:
            cluster.stop()
        rows.append(
            ("ray engine, fake cluster", f"{nodes} CPU, {nodes} node{'s' * (nodes > 1)}", result)
        )
    per_image = check_cost()
    base = rows[0][2]["img_s"]
    lines = [
        f"# data import: {args.images} JPEGs of {args.size} px, {args.classes} classes",
        "",
        f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, python"
        f" {platform.python_version()}; tree generated in {generated:.0f} s (reused when present)",
        "",
        "| engine | where | files | written | wall s | images/s | vs local |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, where, r in rows:
        lines.append(
            f"| {name} | {where} | {r['read']} | {r['written']} | {r['wall_s']:.1f} |"
            f" {r['img_s']:.0f} | {r['img_s'] / base:.2f}x |"
        )
    lines += [
        "",
        f"Check of one {IMAGENET_SIZE[0]}x{IMAGENET_SIZE[1]} JPEG (read from memory, decode,"
        f" store), one core: {per_image * 1000:.2f} ms.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(json.dumps({"check_s_per_imagenet_image": per_image}))


if __name__ == "__main__":
    main()
