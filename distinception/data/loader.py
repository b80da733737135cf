"""Feeding consumers: disjoint per-epoch shares for training, multi-crop batches for evaluation.

Epoch e orders every row of the split by one permutation drawn from (seed, e); consumer i of N
takes positions i, i+N, i+2N, ... of it. Every consumer computes the same permutation without
talking to the others, so the shares are disjoint, together cover the split, and change every
epoch, as the paper's replicas each saw a different slice in a different order. A position
(epoch, offset into the share) is all a consumer needs to continue exactly where it stopped:
the augmentation randomness of each batch is seeded from the position it starts at, so a
resumed stream yields the very same tensors.

A consumer holds only its share of the current epoch in memory, as encoded bytes (a few MB for
the built-in set), and reads it row group by row group. It decodes and augments on the calling
thread: it lives in a one-CPU actor, where worker processes would only compete for that CPU.

That is `shuffle="rows"`. A share spread over the whole split touches every row group, so each
consumer reads the whole split every epoch and holds 1/N of it: fine on a local disk, costly
from a bucket or for a set larger than memory. `shuffle="blocks"` shuffles row groups instead:
epoch e deals the row groups, in an order drawn from (seed, e), round-robin to the consumers;
each consumer reads its groups `WINDOW_GROUPS` at a time, shuffles the rows within each window,
and reads the next window on a thread while it decodes this one. Memory is two windows, and
each row group is read once per epoch by one consumer. Positions and seeded batches work the
same way in both.
"""

from __future__ import annotations

import io
import itertools
import logging
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from distinception.config import SHUFFLES, AugmentConfig, JobConfig
from distinception.data.augment import build_train_transform, normalize
from distinception.data.crops import SCHEMES, views
from distinception.data.shards import (
    DataError,
    Manifest,
    check_labels,
    iter_batches,
    num_classes,
    open_manifest,
    open_parquet,
)
from distinception.uris import redact

__all__ = [
    "RowReader",
    "TrainStream",
    "bn_batches",
    "decode",
    "eval_batches",
    "num_classes",
    "sample_batches",
    "val_batches",
]

log = logging.getLogger(__name__)

#: Row groups a `blocks` consumer shuffles together (and reads ahead of the ones it decodes).
WINDOW_GROUPS = 4

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def decode(data: bytes) -> torch.Tensor | None:
    """Encoded image -> uint8 [3, H, W] RGB, or None when it cannot be decoded.

    JPEG goes through torchvision's libjpeg-turbo decoder, which fails cleanly on damaged
    data. Everything else goes through PIL: torchvision's PNG decoder (0.29) crashes the
    process on some corrupt PNG streams, and one damaged file must not kill a consumer.
    """
    if data[:3] == JPEG_MAGIC:
        try:
            img = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB
            )
        except (RuntimeError, ValueError):
            return None
        return img if img.dtype == torch.uint8 else F.to_dtype(img, torch.uint8, scale=True)
    return decode_pil(data)


def decode_pil(data: bytes) -> torch.Tensor | None:
    """Decode with PIL to uint8 [3, H, W] RGB (16-bit images scaled, not clipped), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                if im.mode.startswith("I"):  # 16/32-bit grey: scale to 8 bits before RGB
                    grey = np.asarray(im).astype(np.float64)
                    grey = grey / (65535.0 if grey.max() > 255 else 255.0) * 255.0
                    rgb = np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=2)
                else:
                    rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError):
        return None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _parse_position(position: dict | None, share: int) -> tuple[int, int]:
    if position is None:
        return 0, 0
    try:
        epoch, offset = position["epoch"], position["offset"]
    except (KeyError, TypeError):
        raise DataError(f"position={position!r}: expected {{'epoch': E, 'offset': O}}") from None
    if not (isinstance(epoch, int) and isinstance(offset, int) and epoch >= 0):
        raise DataError(f"position={position!r}: expected integers epoch >= 0 and offset >= 0")
    if not 0 <= offset <= share:
        raise DataError(f"position={position!r}: offset must be in 0..{share} (the share size)")
    return (epoch + 1, 0) if offset == share else (epoch, offset)


class RowReader:
    """Reads chosen rows of one split, by their index in stored order, touching only the row
    groups that hold them: a consumer's share, or a sample, never the whole split."""

    def __init__(self, manifest: Manifest, split: str) -> None:
        self.manifest = manifest
        self._files = manifest.shard_files(split)
        self._groups: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def group_rows(self) -> list[np.ndarray]:
        """The split's rows (in stored order) of each row group."""
        starts = self._row_groups()[0]
        bounds = [*starts.tolist(), sum(f.rows for f in self._files)]
        return [np.arange(a, b) for a, b in itertools.pairwise(bounds)]

    def _row_groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(first split row, file index, group index in file) of every row group, from footers."""
        if self._groups is None:
            fs, root = self.manifest.filesystem()
            starts, files, groups, start = [], [], [], 0
            for i, shard in enumerate(self._files):
                meta = open_parquet(fs, f"{root.rstrip('/')}/{shard.name}").metadata
                if meta.num_rows != shard.rows:
                    raise DataError(
                        f"shard {shard.name}: {meta.num_rows} rows, the manifest says {shard.rows}"
                    )
                for g in range(meta.num_row_groups):
                    starts.append(start)
                    files.append(i)
                    groups.append(g)
                    start += meta.row_group(g).num_rows
            self._groups = (np.asarray(starts), np.asarray(files), np.asarray(groups))
        return self._groups

    def read(self, rows: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """(encoded images, labels) of `rows`, in the order given."""
        order = np.argsort(rows, kind="stable")
        wanted = rows[order]
        starts, file_of, group_of = self._row_groups()
        where = np.searchsorted(starts, wanted, side="right") - 1
        fs, root = self.manifest.filesystem()
        images: list[bytes] = []
        labels: list[np.ndarray] = []
        open_file, pf = -1, None
        for g in np.unique(where):
            if file_of[g] != open_file:
                open_file = int(file_of[g])
                path = f"{root.rstrip('/')}/{self._files[open_file].name}"
                pf = open_parquet(fs, path)
            assert pf is not None
            table = pf.read_row_group(int(group_of[g]), columns=["image", "label"])
            take = wanted[where == g] - starts[g]
            part = table.take(take)
            values = part.column("label").to_numpy().astype(np.int64)
            check_labels(values, self.manifest.num_classes, self._files[open_file].name)
            images += part.column("image").to_pylist()
            labels.append(values)
        # Back from stored order to the order asked for.
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out = np.concatenate(labels)[inverse] if labels else np.zeros(0, np.int64)
        return [images[k] for k in inverse], out


class TrainStream:
    """An endless stream of augmented training batches for consumer `consumer` of
    `num_consumers`: float32 [B, 3, S, S] normalised images and int64 [B] labels.

    Batches have exactly `batch_size` images and run on across epoch boundaries. Undecodable
    images are skipped and counted in `skipped` (each distinct row once), never raised.
    """

    def __init__(
        self,
        path: str,
        *,
        consumer: int,
        num_consumers: int,
        batch_size: int,
        augment: AugmentConfig,
        input_size: int,
        seed: int,
        split: str = "train",
        position: dict | None = None,
        shuffle: str = "rows",
    ) -> None:
        if shuffle not in SHUFFLES:
            raise DataError(f"shuffle={shuffle!r}: expected one of {', '.join(SHUFFLES)}")
        if num_consumers < 1 or not 0 <= consumer < num_consumers:
            raise DataError(
                f"consumer={consumer}, num_consumers={num_consumers}:"
                " expected 0 <= consumer < num_consumers"
            )
        if batch_size < 1:
            raise DataError(f"batch_size={batch_size}: expected an integer >= 1")
        self.manifest: Manifest = open_manifest(path)
        self.split = split
        self.total = self.manifest.counts[split]
        if self.total < num_consumers:
            raise DataError(
                f"split {split!r} of {redact(path)!r} has {self.total} images:"
                f" too few for num_consumers={num_consumers}"
            )
        self.consumer, self.num_consumers = consumer, num_consumers
        self.batch_size, self.seed = batch_size, seed
        self.shuffle = shuffle
        self.skipped = 0
        self._bad: set[int] = set()
        self._transform = build_train_transform(augment, input_size)
        self._reader = RowReader(self.manifest, split)
        self._groups: list[np.ndarray] = []
        if shuffle == "blocks":
            self._groups = self._reader.group_rows()
            if len(self._groups) < num_consumers:
                raise DataError(
                    f"split {split!r} of {redact(path)!r} has {len(self._groups)} row groups:"
                    " too few"
                    f" for num_consumers={num_consumers} with shuffle=blocks (use rows)"
                )
        # The current epoch's windows: rows in reading order, cut where a read happens.
        self._plan_epoch = -1
        self._windows: list[np.ndarray] = []
        self._window_starts = np.zeros(1, dtype=np.int64)
        # A `blocks` share's size depends on the epoch: check the offset against its epoch's.
        epoch = position.get("epoch") if isinstance(position, dict) else 0
        self._set_epoch(epoch if isinstance(epoch, int) and epoch >= 0 else 0)
        self.epoch, self._offset = _parse_position(position, self.examples_per_epoch)
        self._set_epoch(self.epoch)
        self._loaded: tuple[int, int] = (-1, -1)
        self._images: list[bytes] = []
        self._labels = np.zeros(0, dtype=np.int64)
        self._rows = np.zeros(0, dtype=np.int64)
        self._ahead: tuple[tuple[int, int], Future] | None = None
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def for_job(
        cls,
        cfg: JobConfig,
        path: str,
        consumer: int = 0,
        num_consumers: int = 1,
        position: dict | None = None,
    ) -> TrainStream:
        """Consumer `consumer`'s share of a job's training data, as the job's batch size,
        augment, input size and seed say: a replica and the benchmarks' loops read the same."""
        return cls(
            path,
            consumer=consumer,
            num_consumers=num_consumers,
            batch_size=cfg.data.batch_size,
            augment=cfg.augment,
            input_size=cfg.model.input_size,
            seed=cfg.run.seed,
            position=position,
            shuffle=cfg.data.shuffle,
        )

    def position(self) -> dict:
        """Where the next batch starts; a stream built with it continues exactly from here."""
        return {"epoch": self.epoch, "offset": self._offset}

    def share(self, epoch: int) -> np.ndarray:
        """This consumer's row indices (into the split, in stored order) for `epoch`, in the
        order it reads them."""
        return np.concatenate(self._plan(epoch))

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """`epoch`'s share cut into the windows read at once: the whole share for `rows`."""
        if self.shuffle == "rows":
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.total)
            return [perm[self.consumer :: self.num_consumers]]
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self._groups))
        mine = order[self.consumer :: self.num_consumers]
        windows = []
        for w, start in enumerate(range(0, len(mine), WINDOW_GROUPS)):
            rows = np.concatenate([self._groups[g] for g in mine[start : start + WINDOW_GROUPS]])
            key = [self.seed, epoch, self.num_consumers, self.consumer, w]
            windows.append(np.random.default_rng(key).permutation(rows))
        return windows

    def _set_epoch(self, epoch: int) -> None:
        if self._plan_epoch != epoch:
            self._windows = self._plan(epoch)
            sizes = [len(w) for w in self._windows]
            self._window_starts = np.cumsum([0, *sizes])
            self.examples_per_epoch = int(self._window_starts[-1])
            self._plan_epoch = epoch

    def _load(self, epoch: int, window: int) -> None:
        """Hold window `window` of `epoch` (read ahead already, or read now); for `blocks`,
        start reading the window after it."""
        rows = self._windows[window]
        if self._ahead is not None and self._ahead[0] == (epoch, window):
            self._images, self._labels = self._ahead[1].result()
        else:
            self._images, self._labels = self._reader.read(rows)
        self._ahead = None
        self._rows = rows
        self._loaded = (epoch, window)
        if self.shuffle == "blocks":
            if window + 1 < len(self._windows):
                key, after = (epoch, window + 1), self._windows[window + 1]
            else:
                key, after = (epoch + 1, 0), self._plan(epoch + 1)[0]
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="readahead")
            self._ahead = (key, self._pool.submit(self._reader.read, after))

    def _batch_seed(self) -> int:
        ss = np.random.SeedSequence(
            [self.seed, self.num_consumers, self.consumer, self.epoch, self._offset]
        )
        return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self._next_batch()

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images: list[torch.Tensor] = []
        labels: list[int] = []
        misses = 0
        # Seeded from the start position, in a forked RNG so the caller's torch RNG (dropout,
        # init) is neither consumed nor reset by augmentation.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._batch_seed())
            while len(images) < self.batch_size:
                window = int(np.searchsorted(self._window_starts, self._offset, side="right")) - 1
                if self._loaded != (self.epoch, window):
                    self._load(self.epoch, window)
                k = self._offset - int(self._window_starts[window])
                row = int(self._rows[k])
                img = None if row in self._bad else decode(self._images[k])
                self._offset += 1
                if self._offset == self.examples_per_epoch:
                    self.epoch, self._offset = self.epoch + 1, 0
                    self._set_epoch(self.epoch)
                if img is None:
                    if row not in self._bad:
                        self._bad.add(row)
                        self.skipped += 1
                    misses += 1
                    if misses >= self.examples_per_epoch:
                        raise DataError(
                            f"split {self.split!r}: no decodable image in consumer"
                            f" {self.consumer}'s share ({self.examples_per_epoch} rows)"
                        )
                    continue
                misses = 0
                images.append(self._transform(img))
                labels.append(int(self._labels[k]))
        return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def eval_batches(
    path: str,
    *,
    split: str = "val",
    input_size: int,
    batch_size: int,
    scheme: str = "center",
    limit: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in stored order as (views float32 [B, V, 3, S, S], labels int64 [B]).

    V is 1, 10 or 144 by `scheme`; `limit` > 0 stops after that many rows. Memory is one row
    group of encoded images plus one batch of views (B * V * 3 * S * S floats: keep B small
    for `paper144`). Undecodable images are skipped and logged, as in training.
    """
    if scheme not in SCHEMES:
        raise DataError(f"scheme={scheme!r}: expected one of {', '.join(SCHEMES)}")
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}: expected an integer >= 1")
    if limit < 0:
        raise DataError(f"limit={limit}: expected an integer >= 0 (0 = all)")
    manifest = open_manifest(path)
    manifest.shard_files(split)
    return _eval_batches(manifest, split, input_size, batch_size, scheme, limit)


def _eval_batches(
    manifest: Manifest, split: str, size: int, batch_size: int, scheme: str, limit: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    seen = skipped = 0
    crops: list[torch.Tensor] = []
    labels: list[int] = []
    for batch in iter_batches(manifest, split, rows=256):
        values = batch.column("label").to_numpy().astype(np.int64)
        check_labels(values, manifest.num_classes, f"{manifest.path} ({split})")
        for data, label in zip(batch.column("image").to_pylist(), values, strict=True):
            if limit and seen >= limit:
                break
            seen += 1
            img = decode(data)
            if img is None:
                skipped += 1
                continue
            crops.append(views(img, scheme, size))
            labels.append(int(label))
            if len(crops) == batch_size:
                yield normalize(torch.stack(crops)), torch.tensor(labels, dtype=torch.int64)
                crops, labels = [], []
        if limit and seen >= limit:
            break
    if crops:
        yield normalize(torch.stack(crops)), torch.tensor(labels, dtype=torch.int64)
    if skipped:
        log.warning(
            "skipped %d undecodable images in split %r of %s", skipped, split, manifest.path
        )


def sample_batches(
    path: str,
    *,
    split: str = "train",
    input_size: int,
    batch_size: int,
    count: int,
    seed: int = 0,
) -> Iterator[torch.Tensor]:
    """Center crops of `count` rows drawn at random (from `seed`) across the split, as float32
    [B, 3, S, S] batches in that random order.

    What BatchNorm statistics are recomputed on. They must be a sample of the split, not its
    first rows: an imported folder tree may be stored class by class, and a batch of one class
    has a smaller variance than the split, so averaging per-batch statistics of sorted rows
    shrinks every variance the model normalises by (measured on the digits stored by class: 29%
    validation error against 2% with the same weights). Only the row groups holding the sample
    are read.
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}: expected an integer >= 1")
    if count < 1:
        raise DataError(f"count={count}: expected an integer >= 1")
    manifest = open_manifest(path)
    total = manifest.counts.get(split, 0)
    rows = np.random.default_rng(seed).permutation(total)[:count]
    # One read of the sample's row groups (the rows are spread over nearly all of them), then
    # decoded a batch at a time.
    images, _ = RowReader(manifest, split).read(rows)
    for start in range(0, len(images), batch_size):
        batch = map(decode, images[start : start + batch_size])
        crops = [views(img, "center", input_size)[0] for img in batch if img is not None]
        if crops:
            yield normalize(torch.stack(crops))


def val_batches(cfg: JobConfig, data_path: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The validation images every evaluation scores (center crop, `data.val_limit`)."""
    return eval_batches(
        data_path,
        split="val",
        input_size=cfg.model.input_size,
        batch_size=cfg.data.eval_batch_size,
        scheme="center",
        limit=cfg.data.val_limit,
    )


def bn_batches(cfg: JobConfig, data_path: str) -> Iterator[torch.Tensor]:
    """Training images (center crop, a fixed random sample of the split) that BatchNorm
    statistics are recomputed on."""
    return sample_batches(
        data_path,
        split="train",
        input_size=cfg.model.input_size,
        batch_size=cfg.data.eval_batch_size,
        count=max(256, 4 * cfg.data.eval_batch_size),
    )
