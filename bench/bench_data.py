"""Data-path benchmark: is one CPU core of decoding and augmentation fast enough for a replica?

Measured on ONE thread (torch.set_num_threads(1)), as a replica actor runs with one CPU:

- training images/s of `TrainStream` (read share, decode, `paper` augment) at 64 px from the
  built-in 64 px set, and at 224 px from 256 px sources;
- evaluation images/s of `eval_batches(scheme="paper144")`, 144 views per image;
- beside each, what a replica consumes on the same thread: forward + backward + SGD step of the
  BN GoogLeNet (width 0.25) at 64 px, batch 32, and the faithful one (width 1) at 224, batch 8;
  forward-only over the 144 views for the evaluation rows.

The goal is data/consumer >= 2. With --linear, --learn and --ablate it also measures what the
built-in set asks of a model: a linear classifier on raw pixels; the demo's plain loop over
several seeds (when it leaves chance, how far the final error spreads); and the same loop with
every Inception module cut to its 1x1 and 3x3 branches at the same width.

With --set two-scale they measure a variant of the built-in set instead, whose classes are a
coarse and a fine texture on one target (`render_two_scale`).

With --s3 it times the training stream from local files against the same sets in a bucket of
an S3 server started on 127.0.0.1.

    python bench/bench_data.py [--quick] [--linear] [--learn SEEDS] [--ablate SEEDS]
        [--budget EXAMPLES] [--points N] [--size PX] [--set builtin|two-scale] [--s3 ROUNDS]
        [--out results.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
import pyarrow
import torch
import torchvision
from torch import nn

from distinception.config import AUGMENT_PRESETS, SHUFFLES, DataConfig, ModelConfig
from distinception.data import generated
from distinception.data.generated import (
    SHAPES,
    TEXTURE_PERIODS,
    TEXTURES,
    Canvas,
    Target,
    generate_dataset,
    scene,
    shape_mask,
    texture_mask,
)
from distinception.data.loader import RowReader, TrainStream, decode, eval_batches
from distinception.data.shards import iter_batches, open_manifest
from distinception.model.googlenet import ConvUnit, InceptionSpec, build_googlenet
from distinception.model.loss import classifier_loss


def _rate(step: Callable[[], int], seconds: float, warmup: int = 2) -> float:
    """Items per second of `step` (which returns how many items it handled).

    A first step that takes the whole window is its own measurement: its warm-up (first
    allocations) is small beside it, and a second would double the time (the 144-view forward of
    the paper's model takes about 12 s on one thread)."""
    start = time.perf_counter()
    first = step()
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
        return first / elapsed
    for _ in range(warmup - 1):
        step()
    done, start = 0, time.perf_counter()
    while True:
        done += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def train_stream_rate(
    path: str, size: int, batch: int, seconds: float, shuffle: str = "rows"
) -> float:
    stream = TrainStream(
        path,
        consumer=0,
        num_consumers=1,
        batch_size=batch,
        augment=AUGMENT_PRESETS["paper"],
        input_size=size,
        seed=0,
        shuffle=shuffle,
    )
    it = iter(stream)
    return _rate(lambda: len(next(it)[1]), seconds)


def groups_read(path: str, shuffle: str, consumers: int) -> tuple[int, int]:
    """(row groups consumer 0 of `consumers` reads in epoch 0, row groups in the split)."""
    stream = TrainStream(
        path,
        consumer=0,
        num_consumers=consumers,
        batch_size=1,
        augment=AUGMENT_PRESETS["paper"],
        input_size=32,
        seed=0,
        shuffle=shuffle,
    )
    groups = RowReader(stream.manifest, "train").group_rows()
    share = set(stream.share(0).tolist())
    return sum(1 for rows in groups if share & set(rows.tolist())), len(groups)


def s3_copies(sets: dict[str, str]) -> tuple[Callable[[], None], dict[str, str]]:
    """The local `sets` copied into a bucket of moto's S3 server, started on 127.0.0.1 in a
    process of its own (as a real server would be, so it takes no time from the reader's
    interpreter); returns (stop the server, name -> `s3://` URI with credentials and endpoint)."""
    import socket
    import subprocess

    import pyarrow.fs as pafs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.2)

    def stop() -> None:
        server.terminate()
        server.wait(timeout=30)

    fs = pafs.S3FileSystem(
        access_key="bench",
        secret_key="bench",
        endpoint_override=f"127.0.0.1:{port}",
        scheme="http",
        allow_bucket_creation=True,
    )
    fs.create_dir("bench")
    uris = {}
    for name, local in sets.items():
        pafs.copy_files(local, f"bench/{name}", destination_filesystem=fs)
        uris[name] = f"s3://bench:bench@bench/{name}?scheme=http&endpoint_override=127.0.0.1:{port}"
    return stop, uris


def eval_rate(path: str, size: int, scheme: str, seconds: float) -> float:
    def batches() -> Iterator[int]:
        while True:
            for _, y in eval_batches(
                path, split="train", input_size=size, batch_size=1, scheme=scheme
            ):
                yield len(y)

    it = batches()
    return _rate(lambda: next(it), seconds)


def replica_rate(cfg: ModelConfig, batch: int, seconds: float, classes: int = 10) -> float:
    torch.manual_seed(0)
    model = build_googlenet(cfg, classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, cfg.input_size, cfg.input_size)
    y = torch.randint(0, classes, (batch,))

    def step() -> int:
        loss = classifier_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return batch

    return _rate(step, seconds, warmup=1)


def eval_model_rate(cfg: ModelConfig, views: int, seconds: float, classes: int = 10) -> float:
    """Images/s the evaluator scores when each image is `views` crops (forward only)."""
    model = build_googlenet(cfg, classes).eval()
    x = torch.randn(views, 3, cfg.input_size, cfg.input_size)

    def step() -> int:
        with torch.no_grad():
            model(x)
        return 1

    return _rate(step, seconds, warmup=1)


def _pixels(path: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = open_manifest(path)
    xs, ys = [], []
    for b in iter_batches(m, split):
        for data, label in zip(
            b.column("image").to_pylist(), b.column("label").to_pylist(), strict=True
        ):
            xs.append(decode(data).flatten().double() / 255)
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def linear_baseline(path: str) -> list[tuple[str, float, float]]:
    """Train/val accuracy of linear classifiers on standardised raw pixels."""
    xtr, ytr = _pixels(path, "train")
    xva, yva = _pixels(path, "val")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    k = int(ytr.max()) + 1
    rows = []
    gram = xtr @ xtr.T
    for lam in (1e2, 1e3, 1e4):
        alpha = torch.linalg.solve(
            gram + lam * torch.eye(len(xtr), dtype=gram.dtype), torch.eye(k, dtype=gram.dtype)[ytr]
        )
        w = xtr.T @ alpha
        rows.append(
            (
                f"ridge least squares, lambda={lam:g}",
                float(((xtr @ w).argmax(1) == ytr).double().mean()),
                float(((xva @ w).argmax(1) == yva).double().mean()),
            )
        )
    torch.manual_seed(0)
    xtr32, xva32 = xtr.float(), xva.float()
    for wd in (1e-4, 1e-2):
        lin = torch.nn.Linear(xtr.shape[1], k)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-3, weight_decay=wd)
        for _ in range(30):
            perm = torch.randperm(len(xtr32))
            for i in range(0, len(perm), 128):
                idx = perm[i : i + 128]
                loss = torch.nn.functional.cross_entropy(lin(xtr32[idx]), ytr[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            rows.append(
                (
                    f"logistic regression (Adam, 30 epochs), weight decay {wd:g}",
                    float((lin(xtr32).argmax(1) == ytr).float().mean()),
                    float((lin(xva32).argmax(1) == yva).float().mean()),
                )
            )
    return rows


class TwoBranchInception(nn.Module):
    """An Inception module without its 5x5 and pool branches, at the same width: the 1x1
    branch takes the pool projection's channels and the 3x3 branch the 5x5's, so every later
    layer sees as many channels as before. If the built-in set had no multi-scale structure,
    this model would learn it as well as GoogLeNet does."""

    def __init__(self, in_channels: int, spec: InceptionSpec, *, batch_norm: bool) -> None:
        super().__init__()
        self.conv1x1 = ConvUnit(in_channels, spec.n1x1 + spec.pool_proj, 1, batch_norm=batch_norm)
        self.conv3x3_reduce = ConvUnit(
            in_channels, spec.n3x3red + spec.n5x5red, 1, batch_norm=batch_norm
        )
        self.conv3x3 = ConvUnit(
            spec.n3x3red + spec.n5x5red, spec.n3x3 + spec.n5x5, 3, padding=1, batch_norm=batch_norm
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv1x1(x), self.conv3x3(self.conv3x3_reduce(x))], 1)


#: The two-scale set's factors. 5 and 2 are coprime, so class c = (coarse c mod 5, fine c mod 2)
#: is a distinct pair for every c below 10, and neither factor alone names the class.
TWO_SCALE_COARSE = ("stripes", "checker", "dots", "rings", "grid")
TWO_SCALE_FINE = ("stripes", "dots")
#: The fine texture's period in pixels at a 64 px side (it scales with the side, not the target).
TWO_SCALE_FINE_PERIOD = (4.0, 6.0)


def render_two_scale(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """An image of a variant of the built-in set made for parallel kernels of different sizes.

    The class is a pair of textures on one target: a coarse one whose period scales with the
    target (as in the built-in set: 9-29 px at 64 px) and a fine one of 4-6 px laid over the
    coarse texture's first colour; the shape is random. Telling the class takes both scales at
    the same place, while the clutter (`scene`'s) shows textures at every scale alone. If
    parallel 3x3 and 5x5 kernels are what such cues need, the two-branch model falls behind
    here."""
    coarse = TEXTURES.index(TWO_SCALE_COARSE[label % len(TWO_SCALE_COARSE)])
    fine = TEXTURES.index(TWO_SCALE_FINE[label % len(TWO_SCALE_FINE)])

    def paint(cv: Canvas, t: Target, rng: np.random.Generator) -> None:
        inside = shape_mask(int(rng.integers(len(SHAPES))), t.u, t.v)
        periods = rng.uniform(*TEXTURE_PERIODS)
        pattern = texture_mask(coarse, t.u * periods / 2, t.v * periods / 2)
        per_radius = t.radius / (rng.uniform(*TWO_SCALE_FINE_PERIOD) * size / 64)
        du, dv = rng.uniform(0.0, 1.0, 2)
        detail = texture_mask(fine, t.u * per_radius + du, t.v * per_radius + dv)
        # The fine texture's colour: the first colour a quarter of the way to the other end.
        a2 = np.clip(t.a + (0.25 if t.a.mean() < 0.5 else -0.25), 0.0, 1.0).astype(np.float32)
        cv.paint(t.box, inside & ~pattern & ~detail, t.a)
        cv.paint(t.box, inside & ~pattern & detail, a2)
        cv.paint(t.box, inside & pattern, t.b)

    return scene(size, rng, paint)


#: What --set generates: the built-in set, or its two-scale variant.
SETS = {"builtin": generated.render, "two-scale": render_two_scale}


#: A plain loop has left chance once its top-1 error is at most this (twice chance accuracy).
LEFT_CHANCE = 0.8


def learning_curves(
    path: str, seeds: int, budget: int, points: int, two_branch: bool = False, size: int = 0
) -> list[list[tuple[int, float]]]:
    """(examples seen, val top-1 error) of a plain loop at the demo's settings, per seed.

    The step is the demo's own (`LocalTrainer`: the `demo` recipe's model, crops, optimizer,
    decay groups and schedule, counted in examples) on all of this machine's cores, and the
    error is scored as the averager scores raw weights (center crop, BatchNorm statistics
    recomputed). `two_branch` builds every Inception module as `TwoBranchInception`. `size`
    (default: the demo's) is the model's input, for a set generated at that size."""
    from contextlib import nullcontext

    from distinception.bench.convergence import local_curve
    from distinception.config import from_dict
    from distinception.model import googlenet
    from distinception.recipes import get_recipe

    manifest = open_manifest(path)
    demo = get_recipe("demo")
    px = size or demo.model.input_size
    runs = []
    for seed in range(seeds):
        cfg = from_dict(
            {
                "run": {"seed": seed},
                "data": {"path": path, "image_size": px},
                "model": {"input_size": px},
            },
            demo,
        )
        swap = (
            mock.patch.object(googlenet, "Inception", TwoBranchInception)
            if two_branch
            else nullcontext()
        )
        with swap:
            curve = local_curve(
                cfg,
                path,
                manifest.num_classes,
                budget,
                points,
                manifest.counts["train"],
                threads=os.cpu_count() or 1,
            )
        print(f"  learn[seed {seed}, two_branch={two_branch}]: {curve}", file=sys.stderr)
        runs.append([(examples, err) for _, examples, err in curve])
    return runs


def curve_rows(name: str, runs: list[list[tuple[int, float]]], budget: int) -> list[str]:
    """Markdown rows: one per seed, then the mean and standard deviation of the final error."""
    rows = []
    finals = []
    for seed, curve in enumerate(runs):
        left = next((n for n, err in curve if err <= LEFT_CHANCE), None)
        finals.append(curve[-1][1])
        where = f"{left:,} ({100 * left / budget:.0f}%)" if left is not None else "never"
        marks = " / ".join(f"{100 * err:.1f}" for _, err in curve)
        rows.append(f"| {name} | {seed} | {where} | {marks} | {100 * curve[-1][1]:.1f} |")
    sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
    rows.append(
        f"| {name} | mean ± sd | | | **{100 * statistics.mean(finals):.1f} ± {100 * sd:.1f}** |"
    )
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings, small sets")
    parser.add_argument("--linear", action="store_true", help="linear classifier on raw pixels")
    parser.add_argument(
        "--learn", type=int, default=0, help="seeds of the demo's plain loop on the built-in set"
    )
    parser.add_argument(
        "--ablate", type=int, default=0, help="seeds of the same loop without 5x5/pool branches"
    )
    parser.add_argument(
        "--budget", type=int, default=0, help="examples per --learn run (default: the demo's)"
    )
    parser.add_argument("--points", type=int, default=10, help="evaluations per --learn run")
    parser.add_argument(
        "--size",
        type=int,
        default=DataConfig().image_size,
        help="side of the built-in set for --linear/--learn/--ablate, and the model's input"
        " (default: the demo's)",
    )
    parser.add_argument(
        "--s3",
        type=int,
        default=0,
        help="rounds of the training stream from local files against the same sets in a bucket "
        "of an S3 server on 127.0.0.1 (moto's, a dev dependency)",
    )
    parser.add_argument(
        "--set",
        choices=sorted(SETS),
        default="builtin",
        help="what --linear/--learn/--ablate measure: the built-in set, or its variant whose"
        " classes are a coarse and a fine texture on one target",
    )
    parser.add_argument("--out", default="", help="also write the markdown report here")
    args = parser.parse_args()
    if args.size < 32:
        parser.error(f"--size {args.size}: expected an integer >= 32 (the model's smallest input)")
    torch.set_num_threads(1)
    secs = 2.0 if args.quick else 8.0
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    work = tempfile.mkdtemp(prefix="bench-data-")
    per = 20 if args.quick else 100
    small_size = 64  # the demo's, for the data-path rows
    small = os.path.join(work, f"s{small_size}")
    generate_dataset(small, classes=10, per_class=per, val_per_class=2, size=small_size)
    large = os.path.join(work, "s256")
    generate_dataset(large, classes=10, per_class=per // 4, val_per_class=1, size=256)

    cmd = "python bench/bench_data.py " + " ".join(sys.argv[1:])
    emit(f"Command: `{cmd.strip()}`  ")
    emit(f"Date: {datetime.date.today().isoformat()}  ")
    cpu = _cpu_name()
    emit(
        f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()};"
        f" load average {os.getloadavg()[0]:.1f} at start  "
    )
    emit(
        f"Versions: Python {platform.python_version()}, torch {torch.__version__},"
        f" torchvision {torchvision.__version__}, pyarrow {pyarrow.__version__},"
        f" numpy {np.__version__}; torch threads {torch.get_num_threads()}"
    )
    emit()

    start = time.perf_counter()
    cfg = DataConfig()
    gen_dir = os.path.join(work, "default")
    # The set that --linear/--learn/--ablate measure: the default one, or a small one with
    # --quick, at --size, drawn as --set says.
    with mock.patch.object(generated, "render", SETS[args.set]):
        if args.quick:
            measured = small
            if args.size != small_size or args.set != "builtin":
                measured = os.path.join(work, f"{args.set}-s{args.size}")
                generate_dataset(
                    measured, classes=10, per_class=per, val_per_class=2, size=args.size
                )
        else:
            measured = gen_dir
            generate_dataset(
                gen_dir,
                classes=cfg.classes,
                per_class=cfg.per_class,
                val_per_class=cfg.val_per_class,
                size=args.size,
            )
            emit(
                f"Generating the default {args.set} set ({cfg.classes} classes x"
                f" ({cfg.per_class} + {cfg.val_per_class}) images, {args.size} px JPEG):"
                f" {time.perf_counter() - start:.1f} s on one core"
            )
            emit()

    small_model = ModelConfig(variant="bn", width=0.25, input_size=64)
    paper_model = ModelConfig(variant="faithful", width=1.0, input_size=224)
    emit("| path (one thread) | data images/s | consumer | consumer images/s | data / consumer |")
    emit("|---|---:|---|---:|---:|")
    rows = [
        (
            "decode + `paper` augment, 64 px from 64 px JPEG, batch 32",
            lambda: train_stream_rate(small, 64, 32, secs),
            "train step, bn GoogLeNet w0.25 @64, batch 32",
            lambda: replica_rate(small_model, 32, secs),
        ),
        (
            "decode + `paper` augment, 224 px from 256 px JPEG, batch 8",
            lambda: train_stream_rate(large, 224, 8, secs),
            "train step, faithful GoogLeNet w1.0 @224, batch 8",
            lambda: replica_rate(paper_model, 8, secs),
        ),
        (
            "decode + `paper144` views @64 (144 views/image)",
            lambda: eval_rate(small, 64, "paper144", secs),
            "forward of 144 views, bn w0.25 @64",
            lambda: eval_model_rate(small_model, 144, secs),
        ),
        (
            "decode + `paper144` views @224 (144 views/image)",
            lambda: eval_rate(large, 224, "paper144", secs),
            "forward of 144 views, faithful w1.0 @224",
            lambda: eval_model_rate(paper_model, 144, secs),
        ),
    ]
    for name, data, consumer, consume in rows:
        d, c = data(), consume()
        emit(f"| {name} | {d:.0f} | {consumer} | {c:.1f} | {d / c:.1f}x |")
    emit()

    if args.s3:
        stop, uris = s3_copies({"s64": small, "s256": large})
        try:
            emit(
                f"The training stream (one thread, as above) from local files and from the same"
                f" sets in a bucket of moto's S3 server on 127.0.0.1 (its own process),"
                f" alternated, {args.s3} rounds of each: images/s (mean, min-max), for each"
                " `data.shuffle`. One consumer reads the whole split every epoch (a second or"
                " two here), so the bucket is read throughout; with `blocks` the next window"
                " of row groups is read while this one is decoded."
            )
            emit()
            emit("| stream | shuffle | local files | S3 bucket | S3 / local |")
            emit("|---|---|---:|---:|---:|")
            for label, local, remote, size, batch in (
                ("64 px from 64 px JPEG, batch 32", small, uris["s64"], 64, 32),
                ("224 px from 256 px JPEG, batch 8", large, uris["s256"], 224, 8),
            ):
                for shuffle in SHUFFLES:
                    got: dict[str, list[float]] = {"local": [], "s3": []}
                    for _ in range(args.s3):
                        got["local"].append(train_stream_rate(local, size, batch, secs, shuffle))
                        got["s3"].append(train_stream_rate(remote, size, batch, secs, shuffle))
                    cells = [
                        f"{statistics.mean(v):.0f} ({min(v):.0f}-{max(v):.0f})"
                        for v in got.values()
                    ]
                    ratio = statistics.mean(got["s3"]) / statistics.mean(got["local"])
                    emit(f"| {label} | {shuffle} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
            emit()
            if not args.quick:  # the quick sets have one row group
                emit(
                    "What one of 4 replicas downloads per epoch from a bucket, on the default"
                    " built-in set (row groups of 256 images, as the importer and generator"
                    " write them):"
                )
                emit()
                emit("| shuffle | row groups read by replica 0 of 4 in epoch 0 | of the split's |")
                emit("|---|---:|---:|")
                for shuffle in SHUFFLES:
                    read, total = groups_read(gen_dir, shuffle, 4)
                    emit(f"| {shuffle} | {read} | {total} |")
                emit()
        finally:
            stop()

    if args.linear:
        path = measured
        emit("Linear classifiers on standardised raw pixels of the built-in set (chance 0.10):")
        emit()
        emit("| classifier | train acc | val acc |")
        emit("|---|---:|---:|")
        for name, tr, va in linear_baseline(path):
            emit(f"| {name} | {tr:.3f} | {va:.3f} |")
        emit()

    if args.learn > 0 or args.ablate > 0:
        from distinception.recipes import get_recipe

        path = measured
        demo = get_recipe("demo")
        budget = args.budget or int(demo.run.epochs * open_manifest(path).counts["train"])
        emit(
            f"Learning curves, {args.set} set: the demo's plain loop (`LocalTrainer`, recipe"
            f" `demo`: bn GoogLeNet w{demo.model.width} @{args.size}, batch"
            f" {demo.data.batch_size}, SGD lr"
            f" {demo.optim.lr} momentum {demo.optim.momentum}, {demo.optim.lr_decay} per"
            f" {demo.optim.lr_decay_epochs:g} epoch), {budget:,} examples, {os.cpu_count() or 1}"
            f" threads; top-1 error % on the validation split at every {100 // args.points}% of"
            f" the budget; 'left chance' = first evaluation at <= {100 * LEFT_CHANCE:.0f}% error"
            " (chance 90%). `two-branch`: every Inception module without its 5x5 and pool"
            " branches, their channels moved to the 1x1 and 3x3 branches."
        )
        emit()
        emit("| model | seed | left chance after | error % at each evaluation | final % |")
        emit("|---|---:|---:|---|---:|")
        for name, seeds, two_branch in (
            ("GoogLeNet", args.learn, False),
            ("two-branch", args.ablate, True),
        ):
            if seeds:
                runs = learning_curves(path, seeds, budget, args.points, two_branch, args.size)
                for row in curve_rows(name, runs, budget):
                    emit(row)
        emit()

    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
