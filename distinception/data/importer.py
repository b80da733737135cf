"""Turning an image tree into shards, and looking at a data set.

An import reads an ImageFolder tree (src/<class>/<image>) or an ImageNet-style split tree
(src/train/<class>/..., src/val/<class>/...), local or in a bucket (any `pyarrow.fs` URI). Every
file is checked by decoding it with the decoder training uses (`loader.decode`), so a file that
passes import cannot fail a consumer later. JPEG and PNG bytes are stored as they are, whatever
their colour model or depth; anything else PIL reads (GIF, BMP, TIFF, WebP, and the rare JPEG
only PIL decodes) is stored re-encoded as 8-bit RGB PNG, which is lossless for what training
sees. Bad files are skipped and counted by reason. Rows are stored in a random order drawn from
the seed, not class by class, so any prefix of a split (`data.val_limit`, a quick look) holds
every class.

The work is planned here once and cut into shard tasks: the k-th `shard_rows` files of a split,
in stored order, become its k-th shard. A task reads, checks and writes its shard by itself and
records what it skipped in the shard's footer. So the same tree gives the same shards whoever
runs the tasks (`import_tree`'s process pool, or Ray Data on a cluster through
`distinception.importing`), memory is one row group per task, and an interrupted import
resumes: whole shards whose footer matches their task are kept, the rest are redone, and the
manifest is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import warnings
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing import get_context
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import encode_png, write_png
from torchvision.transforms.v2 import functional as F
from torchvision.utils import make_grid
from tqdm import tqdm

from distinception.data.loader import JPEG_MAGIC, PNG_MAGIC, decode, decode_pil
from distinception.data.shards import (
    DataError,
    Manifest,
    ShardFile,
    ShardWriter,
    first_line,
    iter_batches,
    join,
    new_dataset_root,
    open_manifest,
    open_parquet,
    resolve,
    shard_name,
    write_manifest,
)
from distinception.uris import redact

#: Reasons a file is skipped, as reported.
EMPTY = "empty file"
NOT_IMAGE = "not an image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
UNREADABLE = "unreadable"
OUTSIDE = "outside a class folder"
UNKNOWN_CLASS = "class not in train/"

#: The footer key under which a shard records the task it was written for and what it skipped.
FOOTER_KEY = "distinception.import"
_Item = tuple[str, str, int]  # (key relative to src, split, label)
#: What `shard_name` gives an imported split's shards; other files in the output are left alone.
_SHARD_NAME = re.compile(r"(train|val)-\d{5}\.parquet")


@dataclass
class ImportReport:
    """What an import read, wrote and skipped, and why."""

    src: str
    out: str
    classes: list[str]
    layout: str
    read: int = 0
    listed: int = 0
    written: dict[str, int] = field(default_factory=dict)
    reencoded: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    per_class: dict[str, list[int]] = field(default_factory=dict)
    seconds: float = 0.0
    engine: str = "local"
    shards: int = 0
    resumed: int = 0

    def format(self) -> str:
        lines = [
            f"imported {redact(self.src)} -> {redact(self.out)} ({self.layout} layout)"
            f" in {self.seconds:.1f} s"
            f" ({self.engine} engine)",
            f"  files read: {self.read}",
        ]
        if self.resumed:
            lines[-1] += f" of {self.listed} (the others are in the kept shards)"
            lines.append(
                f"  resumed: {self.resumed} of {self.shards} shards were already written and kept"
            )
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


def _files_under(fs: pafs.FileSystem, root: str, folder: str) -> list[str]:
    """Files under `folder`, as keys relative to `root`, sorted; hidden files and folders (and
    everything inside hidden folders) are left out."""
    selector = pafs.FileSelector(join(root, folder), recursive=True)
    found = []
    for info in fs.get_file_info(selector):
        key = info.path[len(root) :].lstrip("/")
        if info.type == pafs.FileType.File and not any(p.startswith(".") for p in key.split("/")):
            found.append(key)
    return sorted(found)


def _listing(fs: pafs.FileSystem, root: str, folder: str) -> tuple[list[str], list[str]]:
    """(class folders, loose files) directly inside `folder`, as names, sorted, not hidden."""
    infos = fs.get_file_info(pafs.FileSelector(join(root, folder) if folder else root))
    names = {
        kind: sorted(
            i.base_name for i in infos if i.type == kind and not i.base_name.startswith(".")
        )
        for kind in (pafs.FileType.Directory, pafs.FileType.File)
    }
    return names[pafs.FileType.Directory], names[pafs.FileType.File]


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def plan(src: str, val_fraction: float, seed: int) -> tuple[str, list[str], list[_Item], Counter]:
    """(layout, classes, [(key, split, label)] in the order they are stored, counts of files
    that cannot be labelled). Keys are paths relative to `src` with "/" between parts."""
    try:
        fs, root = resolve(src)
        found = _is_dir(fs, root)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"src={redact(src)!r}: cannot be listed ({first_line(err)})") from None
    if not found:
        raise DataError(f"src={redact(src)!r}: expected a directory of class folders")
    outside: list[str] = []
    unknown: list[str] = []
    items: list[_Item] = []
    if _is_dir(fs, join(root, "train")) and _is_dir(fs, join(root, "val")):
        layout = "train/val"
        classes = _listing(fs, root, "train")[0]
        index = {c: i for i, c in enumerate(classes)}
        for split in ("train", "val"):
            folders, loose = _listing(fs, root, split)
            outside += loose
            for name in folders:
                keys = _files_under(fs, root, f"{split}/{name}")
                if name not in index:
                    unknown += keys
                    continue
                items += [(k, split, index[name]) for k in keys]
    else:
        if not 0 <= val_fraction < 1:
            raise DataError(f"val_fraction={val_fraction}: expected a number in [0, 1)")
        layout = "class folders"
        classes, outside = _listing(fs, root, "")
        for label, name in enumerate(classes):
            files = _files_under(fs, root, name)
            rng = np.random.default_rng([seed, label])
            n_val = round(val_fraction * len(files))
            val = set(rng.permutation(len(files))[:n_val].tolist())
            items += [(p, "val" if k in val else "train", label) for k, p in enumerate(files)]
    if not classes:
        where = join(redact(src), "train") if layout == "train/val" else redact(src)
        raise DataError(f"src={where!r}: no class folders found; expected src/<class>/<images>")
    order = np.random.default_rng([seed, len(items)]).permutation(len(items))
    items = [items[k] for k in order]
    return layout, classes, items, Counter({OUTSIDE: len(outside), UNKNOWN_CLASS: len(unknown)})


@dataclass(frozen=True)
class ShardTask:
    """One shard to import: the files of `split` it holds, in stored order, and their labels."""

    split: str
    index: int
    keys: tuple[str, ...]
    labels: tuple[int, ...]

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)

    def fingerprint(self) -> str:
        """What the shard was planned to hold: a resumed import keeps a written shard only if
        its footer carries the same fingerprint (same files, labels and place)."""
        doc = json.dumps([self.split, self.index, self.keys, self.labels])
        return hashlib.sha256(doc.encode()).hexdigest()

    def to_row(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "index": self.index,
            "keys": list(self.keys),
            "labels": list(self.labels),
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ShardTask:
        return cls(
            str(row["split"]),
            int(row["index"]),
            tuple(str(k) for k in row["keys"]),
            tuple(int(v) for v in row["labels"]),
        )


@dataclass
class ShardResult:
    """What one task wrote (`file` is None when every one of its files was skipped)."""

    name: str
    fingerprint: str
    file: ShardFile | None
    class_counts: list[int]
    skipped: Counter[str] = field(default_factory=Counter)
    reencoded: int = 0

    def to_json(self) -> str:
        doc = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "file": None if self.file is None else [self.file.rows, self.file.bytes],
            "class_counts": self.class_counts,
            "skipped": dict(self.skipped),
            "reencoded": self.reencoded,
        }
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> ShardResult:
        doc = json.loads(text)
        rows_bytes = doc["file"]
        return cls(
            name=doc["name"],
            fingerprint=doc["fingerprint"],
            file=None if rows_bytes is None else ShardFile(doc["name"], *rows_bytes),
            class_counts=[int(n) for n in doc["class_counts"]],
            skipped=Counter(doc["skipped"]),
            reencoded=int(doc["reencoded"]),
        )


def _read(fs: pafs.FileSystem, path: str) -> bytes | None:
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, pa.ArrowException):
        return None


#: Files a task reads ahead of the one it checks. A file in a bucket is a request of tens of
#: milliseconds, longer than checking it; this many in flight keep the task's CPU busy.
READ_AHEAD = 16


def _contents(fs: pafs.FileSystem, root: str, keys: Iterable[str]) -> Iterator[bytes | None]:
    """Each key's bytes (None if unreadable), in order, with up to `READ_AHEAD` reads in flight
    on threads; memory is that many files."""
    todo = iter(keys)
    with ThreadPoolExecutor(READ_AHEAD) as pool:
        window = deque(pool.submit(_read, fs, join(root, k)) for k in islice(todo, READ_AHEAD))
        while window:
            data = window.popleft().result()
            key = next(todo, None)
            if key is not None:
                window.append(pool.submit(_read, fs, join(root, key)))
            yield data


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except (OSError, pa.ArrowException):  # a bucket that is gone can fail the question itself
        return False


def import_shard(
    src: str, out: str, task: ShardTask, num_classes: int, row_group_rows: int = 256
) -> ShardResult:
    """Read, check and write one shard task; the shard's footer records the result, so a later
    run can keep the shard without reading it again. Runs wherever the engine puts it.

    A file that cannot be read is skipped and counted, but a tree that is gone altogether (a
    bucket deleted mid-import) or an output that cannot be written stops the import with one
    line: counting a vanished tree as unreadable files would finish a set that is mostly
    missing."""
    torch.set_num_threads(1)
    src_fs, src_root = resolve(src)
    out_fs, out_root = resolve(out)
    # Rolls only on close, after the footer is set: one file per task.
    writer = ShardWriter(
        out_fs,
        out_root,
        task.split,
        shard_rows=len(task.keys) + 1,
        row_group_rows=row_group_rows,
        first_index=task.index,
    )
    result = ShardResult(task.name, task.fingerprint(), None, [0] * num_classes)
    try:
        contents = _contents(src_fs, src_root, task.keys)
        for key, label, data in zip(task.keys, task.labels, contents, strict=True):
            if data is None:
                if not _exists(src_fs, src_root):
                    raise DataError(
                        f"src={redact(src)!r}: no longer exists (shard {task.name} was being"
                        " imported); nothing was finished, run the import again once it is back"
                    )
                result.skipped[UNREADABLE] += 1
                continue
            reason, stored, reencoded = check_image(data)
            if reason is not None:
                result.skipped[reason] += 1
                continue
            result.reencoded += reencoded
            result.class_counts[label] += 1
            writer.write(stored, label, key)
        rows = sum(result.class_counts)
        # The footer cannot hold the file's own size: a resumed import reads it from the store.
        writer.footer = {FOOTER_KEY: result.to_json()}
        files = writer.close()
    except (OSError, pa.ArrowException) as err:
        with contextlib.suppress(OSError, pa.ArrowException):
            writer.abort()
        raise DataError(
            f"out={redact(out)!r}: shard {task.name} could not be written ({first_line(err)})"
        ) from None
    except BaseException:
        with contextlib.suppress(OSError, pa.ArrowException):
            writer.abort()
        raise
    if rows:
        result.file = files[0]
    return result


def _footer_result(fs: pafs.FileSystem, root: str, task: ShardTask) -> ShardResult | None:
    """The result recorded in the footer of `task`'s shard, if the shard is whole and was
    written for this very task; None means the task must run."""
    path = join(root, task.name)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    try:
        meta = open_parquet(fs, path).metadata
    except DataError:
        return None
    raw = (meta.metadata or {}).get(FOOTER_KEY.encode())
    if raw is None:
        return None
    try:
        result = ShardResult.from_json(raw.decode())
    except (ValueError, KeyError, TypeError):
        return None
    if result.fingerprint != task.fingerprint() or meta.num_rows != sum(result.class_counts):
        return None
    result.file = ShardFile(task.name, meta.num_rows, int(info.size or 0))
    return result


@dataclass
class ImportPlan:
    """An import cut into shard tasks, with the shards an earlier, interrupted run finished."""

    src: str
    out: str
    layout: str
    classes: list[str]
    tasks: list[ShardTask]
    unlabelled: Counter
    done: dict[str, ShardResult]
    row_group_rows: int
    started: float

    @property
    def todo(self) -> list[ShardTask]:
        return [t for t in self.tasks if t.name not in self.done]

    @property
    def files(self) -> int:
        return sum(len(t.keys) for t in self.tasks)


def plan_import(
    src: str,
    out: str,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    shard_rows: int = 2048,
    row_group_rows: int = 256,
) -> ImportPlan:
    """List `src`, cut it into shard tasks and find the ones already written at `out`.

    Files in `out` named like shards that no task will write (left by an interrupted import
    with other settings) are removed, so the finished set holds only what its manifest lists.
    """
    if shard_rows < 1 or row_group_rows < 1:
        raise DataError(
            f"shard_rows={shard_rows}, row_group_rows={row_group_rows}: expected integers >= 1"
        )
    started = time.perf_counter()
    layout, classes, items, unlabelled = plan(src, val_fraction, seed)
    fs, root = new_dataset_root(out)
    tasks = []
    for split in ("train", "val"):
        mine = [(key, label) for key, s, label in items if s == split]
        for index, begin in enumerate(range(0, len(mine), shard_rows)):
            chunk = mine[begin : begin + shard_rows]
            tasks.append(
                ShardTask(split, index, tuple(k for k, _ in chunk), tuple(v for _, v in chunk))
            )
    done = {}
    for task in tasks:
        result = _footer_result(fs, root, task)
        if result is not None:
            done[task.name] = result
    planned = {t.name for t in tasks}
    for info in fs.get_file_info(pafs.FileSelector(root)):
        name = info.base_name.removesuffix(".tmp")
        if _SHARD_NAME.fullmatch(name) and (name not in planned or name != info.base_name):
            fs.delete_file(info.path)
    return ImportPlan(src, out, layout, classes, tasks, unlabelled, done, row_group_rows, started)


def finish_import(plan: ImportPlan, results: Iterable[ShardResult], engine: str) -> ImportReport:
    """Write the manifest from every task's result (run now or kept from before) and report."""
    by_name = dict(plan.done)
    by_name.update((r.name, r) for r in results)
    missing = [t.name for t in plan.tasks if t.name not in by_name]
    if missing:
        raise DataError(f"out={plan.out!r}: shards {missing[:3]} were not written; run again")
    report = ImportReport(
        src=plan.src, out=plan.out, classes=plan.classes, layout=plan.layout, engine=engine
    )
    # Files outside any class folder are seen again by every run's listing.
    report.listed = plan.files + plan.unlabelled.total()
    report.read = sum(len(t.keys) for t in plan.todo) + plan.unlabelled.total()
    report.skipped.update(+plan.unlabelled)
    report.shards = len(plan.tasks)
    report.resumed = len(plan.done)
    files: dict[str, list[ShardFile]] = {"train": [], "val": []}
    counts = {split: [0] * len(plan.classes) for split in files}
    for task in plan.tasks:
        result = by_name[task.name]
        report.skipped.update(result.skipped)
        report.reencoded += result.reencoded
        if result.file is not None:
            files[task.split].append(result.file)
            for label, n in enumerate(result.class_counts):
                counts[task.split][label] += n
    origin = redact(plan.src) if "://" in plan.src else os.path.abspath(plan.src)
    # A split with no rows (no val files at all) is left out, as the writers do.
    kept = [split for split in files if files[split]]
    manifest = Manifest(
        path=plan.out,
        classes=tuple(plan.classes),
        counts={split: sum(counts[split]) for split in kept},
        class_counts={split: counts[split] for split in kept},
        files={split: files[split] for split in kept},
        source={"imported_from": origin},
    )
    write_manifest(manifest)
    for split in files:
        report.written[split] = sum(counts[split])
        report.per_class[split] = counts[split]
    report.seconds = time.perf_counter() - plan.started
    return report


#: Fewer files than this are checked in this process: a pool's processes each import torch
#: first, seconds that a small import does not win back.
POOL_MIN_FILES = 1000


def _run_local(plan: ImportPlan, workers: int) -> Iterator[ShardResult]:
    args = [(plan.src, plan.out, t, len(plan.classes), plan.row_group_rows) for t in plan.todo]
    files = sum(len(t.keys) for t in plan.todo)
    if workers <= 1 or len(args) <= 1 or files < POOL_MIN_FILES:
        for a in args:
            yield import_shard(*a)
        return
    # "spawn" because forking a process that already runs torch threads can deadlock.
    with ProcessPoolExecutor(min(workers, len(args)), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(import_shard, *a) for a in args]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def run_import(
    plan: ImportPlan, results: Iterable[ShardResult], engine: str, progress: bool
) -> ImportReport:
    """Collect `results` as an engine yields them, with a progress bar in files, then finish."""
    sizes = {t.name: len(t.keys) for t in plan.todo}
    collected = []
    with tqdm(
        total=sum(sizes.values()), desc=f"importing ({engine})", unit="img", disable=not progress
    ) as bar:
        for result in results:
            collected.append(result)
            bar.update(sizes[result.name])
    return finish_import(plan, collected, engine)


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
    """Import an image tree into a data set at `out` (paths or URIs), shard tasks run by a pool
    of `workers` processes on this machine; see the module docstring.

    Without a train/ + val/ layout, each class's val split is `val_fraction` of its files,
    drawn deterministically from `seed`.
    """
    planned = plan_import(src, out, val_fraction=val_fraction, seed=seed, shard_rows=shard_rows)
    return run_import(planned, _run_local(planned, workers), "local", progress)


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
