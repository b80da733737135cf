"""Turning an image tree into shards, and looking at a data set.

`import_tree` reads an ImageFolder tree (src/<class>/<image>) or an ImageNet-style split tree
(src/train/<class>/..., src/val/<class>/...). Every file is checked by decoding it with the
decoder training uses (`loader.decode`), so a file that passes import cannot fail a consumer
later. JPEG and PNG bytes are stored as they are, whatever their colour model or depth; anything
else PIL reads (GIF, BMP, TIFF, WebP, and the rare JPEG only PIL decodes) is stored re-encoded
as 8-bit RGB PNG, which is lossless for what training sees. Bad files are skipped and counted by
reason. Rows are stored in a random order drawn from the seed, not class by class, so any
prefix of a split (`data.val_limit`, a quick look) holds every class. The check runs in a pool
of processes over a bounded window of files while this process writes, so memory holds a window
of images, never the set.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import encode_png, write_png
from torchvision.transforms.v2 import functional as F
from torchvision.utils import make_grid
from tqdm import tqdm

from distinception.data.loader import JPEG_MAGIC, PNG_MAGIC, decode, decode_pil
from distinception.data.shards import (
    DataError,
    DatasetWriter,
    Manifest,
    iter_batches,
    open_manifest,
)

#: Reasons a file is skipped, as reported.
EMPTY = "empty file"
NOT_IMAGE = "not an image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"
OUTSIDE = "outside a class folder"
UNKNOWN_CLASS = "class not in train/"

_CHUNK = 32  # files per task sent to a worker: large enough to amortise the round trip
_Item = tuple[str, str, int]  # (file, split, label)
_Checked = tuple[str, str, int, str | None, bytes, bool]  # ... + (reason, bytes, re-encoded)


@dataclass
class ImportReport:
    """What an import read, wrote and skipped, and why."""

    src: str
    out: str
    classes: list[str]
    layout: str
    read: int = 0
    written: dict[str, int] = field(default_factory=dict)
    reencoded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    per_class: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"imported {self.src} -> {self.out} ({self.layout} layout) in {self.seconds:.1f} s",
            f"  files read: {self.read}",
        ]
        for split, n in self.written.items():
            lines.append(f"  {split}: {n} images written")
        if self.reencoded:
            lines.append(f"  re-encoded to PNG: {self.reencoded}")
        skipped = sum(self.skipped.values())
        lines.append(f"  skipped: {skipped}")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"    {reason}: {n}")
        splits = list(self.per_class)
        lines.append("  per class: " + " / ".join(splits))
        width = max((len(c) for c in self.classes), default=0)
        for i, name in enumerate(self.classes):
            counts = " / ".join(str(self.per_class[s][i]) for s in splits)
            lines.append(f"    {name:<{width}}  {counts}")
        return "\n".join(lines)


def _png(img: torch.Tensor) -> bytes:
    return encode_png(img).numpy().tobytes()


def _pil_reason(data: bytes) -> str:
    """Why PIL cannot read `data`: not an image at all, cut short, or damaged."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    except UnidentifiedImageError:
        return NOT_IMAGE
    except Exception as err:  # PIL raises many types for damaged files
        return TRUNCATED if "truncated" in str(err) else CORRUPT
    return CORRUPT


def check_image(data: bytes) -> tuple[str | None, bytes, bool]:
    """(reason to skip or None, bytes to store, re-encoded?) for one file's content.

    The check is the consumers' own `decode`, so whatever is stored decodes in training.
    """
    if not data:
        return EMPTY, b"", False
    img = decode(data)
    if img is None and data[:3] == JPEG_MAGIC:
        img = decode_pil(data)  # a JPEG variant only PIL reads: store it as PNG
        if img is not None:
            return None, _png(img), True
    if img is None:
        return _pil_reason(data), b"", False
    if data[:3] == JPEG_MAGIC or data[:8] == PNG_MAGIC:
        return None, data, False
    return None, _png(img), True


def _check_files(items: list[_Item]) -> list[_Checked]:
    torch.set_num_threads(1)
    out = []
    for path, split, label in items:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            out.append((path, split, label, UNREADABLE, b"", False))
            continue
        reason, stored, reencoded = check_image(data)
        out.append((path, split, label, reason, stored, reencoded))
    return out


def _files_under(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, n) for n in sorted(filenames) if not n.startswith(".")]
    return found


def _class_dirs(folder: str) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def plan(src: str, val_fraction: float, seed: int) -> tuple[str, list[str], list[_Item], Counter]:
    """(layout, classes, [(file, split, label)] in the order they are stored, counts of files
    that cannot be labelled)."""
    if not os.path.isdir(src):
        raise DataError(f"src={src!r}: expected a directory of class folders")
    train_dir, val_dir = os.path.join(src, "train"), os.path.join(src, "val")
    outside: list[str] = []
    unknown: list[str] = []
    items: list[_Item] = []
    if os.path.isdir(train_dir) and os.path.isdir(val_dir):
        layout = "train/val"
        classes = _class_dirs(train_dir)
        index = {c: i for i, c in enumerate(classes)}
        for split, folder in (("train", train_dir), ("val", val_dir)):
            outside += [e.path for e in os.scandir(folder) if e.is_file()]
            for name in _class_dirs(folder):
                if name not in index:
                    unknown += _files_under(os.path.join(folder, name))
                    continue
                items += [(p, split, index[name]) for p in _files_under(os.path.join(folder, name))]
    else:
        if not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction={val_fraction}: expected a number in [0, 1)")
        layout = "class folders"
        classes = _class_dirs(src)
        outside += [e.path for e in os.scandir(src) if e.is_file() and not e.name.startswith(".")]
        for label, name in enumerate(classes):
            files = _files_under(os.path.join(src, name))
            rng = np.random.default_rng([seed, label])
            n_val = round(val_fraction * len(files))
            val = set(rng.permutation(len(files))[:n_val].tolist())
            items += [(p, "val" if k in val else "train", label) for k, p in enumerate(files)]
    if not classes:
        where = train_dir if layout == "train/val" else src
        raise DataError(f"src={where!r}: no class folders found; expected src/<class>/<images>")
    order = np.random.default_rng([seed, len(items)]).permutation(len(items))
    items = [items[k] for k in order]
    return layout, classes, items, Counter({OUTSIDE: len(outside), UNKNOWN_CLASS: len(unknown)})


def _results(items: list[_Item], workers: int) -> Iterator[_Checked]:
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    if workers <= 1:
        for chunk in chunks:
            yield from _check_files(chunk)
        return
    # At most 2 chunks per worker in flight: the pool stays busy and memory stays bounded.
    # "spawn" because forking a process that already runs torch threads can deadlock.
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        pending: deque[Future] = deque()
        todo = iter(chunks)
        for chunk in todo:
            pending.append(pool.submit(_check_files, chunk))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.popleft().result()
            chunk = next(todo, None)
            if chunk is not None:
                pending.append(pool.submit(_check_files, chunk))
            yield from done


def import_tree(
    src: str,
    out: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    workers: int = 2,
    shard_rows: int = 2048,
    progress: bool = True,
) -> ImportReport:
    """Import an image tree into a data set at `out` (a path or URI); see the module docstring.

    Without a train/ + val/ layout, each class's val split is `val_fraction` of its files,
    drawn deterministically from `seed`.
    """
    start = time.perf_counter()
    layout, classes, items, unlabelled = plan(src, val_fraction, seed)
    report = ImportReport(src=src, out=out, classes=classes, layout=layout)
    report.read = len(items) + unlabelled.total()
    report.skipped.update(+unlabelled)
    with (
        DatasetWriter(
            out, classes, shard_rows=shard_rows, source={"imported_from": os.path.abspath(src)}
        ) as writer,
        tqdm(total=len(items), desc="importing", unit="img", disable=not progress) as bar,
    ):
        for path, split, label, reason, data, reencoded in _results(items, workers):
            bar.update()
            if reason is not None:
                report.skipped[reason] += 1
                continue
            report.reencoded += reencoded
            writer.write(split, data, label, os.path.relpath(path, src))
    manifest = writer.manifest
    for split in ("train", "val"):
        report.written[split] = manifest.counts.get(split, 0)
        report.per_class[split] = manifest.class_counts.get(split, [0] * len(classes))
    report.seconds = time.perf_counter() - start
    return report


def inspect_dataset(path: str, grid_png: str | None = None, *, per_class: int = 8) -> str:
    """The manifest summary and per-class counts; with `grid_png`, also a PNG of the first
    `per_class` training images of each of the first 16 classes, one row per class."""
    manifest = open_manifest(path)
    lines = [manifest.summary()]
    splits = list(manifest.splits)
    width = max(len(c) for c in manifest.classes)
    lines.append(f"  {'class':<{width}}  " + " / ".join(splits))
    for i, name in enumerate(manifest.classes):
        counts = " / ".join(str(manifest.class_counts[s][i]) for s in splits)
        lines.append(f"  {name:<{width}}  {counts}")
    if grid_png:
        lines.append(f"  sample grid: {_write_grid(manifest, grid_png, per_class)}")
    return "\n".join(lines)


def _write_grid(manifest: Manifest, grid_png: str, per_class: int, thumb: int = 64) -> str:
    rows = min(manifest.num_classes, 16)
    tiles = torch.zeros((rows, per_class, 3, thumb, thumb), dtype=torch.uint8)
    filled = np.zeros(rows, dtype=np.int64)
    split = "train" if "train" in manifest.splits else manifest.splits[0]
    for batch in iter_batches(manifest, split, rows=256):
        for data, label in zip(
            batch.column("image").to_pylist(), batch.column("label").to_pylist(), strict=True
        ):
            if label >= rows or filled[label] >= per_class:
                continue
            img = decode(data)
            if img is None:
                continue
            img = F.center_crop(F.resize(img, thumb, antialias=True), [thumb, thumb])
            tiles[label, filled[label]] = img
            filled[label] += 1
        if (filled >= per_class).all():
            break
    grid = make_grid(tiles.flatten(0, 1), nrow=per_class, padding=2)
    os.makedirs(os.path.dirname(os.path.abspath(grid_png)), exist_ok=True)
    write_png(grid, grid_png)
    return grid_png
