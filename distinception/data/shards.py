"""The on-disk data set: Parquet shards of encoded images plus one JSON manifest.

Images stay encoded (JPEG/PNG bytes) so a shard costs what the source files cost and decoding
happens where the CPU budget is, in the consumer. The manifest is written last, so a directory
without one is an interrupted write, never a silently short data set. Paths are local or any
`pyarrow.fs` URI (file://, s3://, gs://), so a cluster job reads the same layout from a bucket.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from distinception.config import ConfigError
from distinception.uris import redact

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int32()), ("key", pa.string())])
_COLUMNS = ", ".join(SCHEMA.names)


class DataError(ConfigError):
    """A data set that cannot be used as it is; the message is one line naming what and where.

    It is a `ConfigError` so that entry points report it like any other user mistake.
    """


def first_line(err: BaseException) -> str:
    """An error's message cut to one line (storage errors carry whole request dumps)."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root) for a local path or a `pyarrow.fs` URI."""
    if not path:
        raise DataError("data path '': expected a directory or a URI such as s3://bucket/set")
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowException, ValueError) as err:
            raise DataError(
                f"data path {redact(path)!r}: not a usable URI ({first_line(err)})"
            ) from None
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def join(root: str, name: str) -> str:
    """`name` under `root`, for local paths and bucket keys alike."""
    return f"{root.rstrip('/')}/{name}"


@dataclass(frozen=True)
class ShardFile:
    """One Parquet file of a split: its name relative to the data set root, rows and bytes."""

    name: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """What a data set holds. `counts[split]` is the number of rows of that split and
    `class_counts[split][label]` the rows per class; `path` is where it was opened from."""

    path: str
    classes: tuple[str, ...]
    counts: dict[str, int]
    class_counts: dict[str, list[int]]
    files: dict[str, list[ShardFile]]
    image_size: int | None = None
    source: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.files)

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        return resolve(self.path)

    def shard_files(self, split: str) -> list[ShardFile]:
        if split not in self.files:
            have = ", ".join(self.files) or "none"
            raise DataError(f"split={split!r}: not in {redact(self.path)!r}; it has {have}")
        return self.files[split]

    @property
    def nbytes(self) -> int:
        """The bytes of all its shards, as the manifest lists them."""
        return sum(f.bytes for files in self.files.values() for f in files)

    def digest(self) -> str:
        """12 hex digits of a SHA-256 over every shard's bytes, in manifest order.

        Two data sets generated from one config on different machines can differ in their bytes
        (the built-in set painted by numpy without AVX2 does), and a run trained on them does
        not repeat exactly: benchmark tables print this so such runs can be told apart. It
        reads the whole data set once."""
        import hashlib

        fs, root = self.filesystem()
        h = hashlib.sha256()
        for split in self.splits:
            for shard in self.files[split]:
                with fs.open_input_stream(join(root, shard.name)) as f:
                    while chunk := f.read(1 << 22):
                        h.update(chunk)
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        doc = {
            "format_version": self.format_version,
            "classes": list(self.classes),
            "counts": self.counts,
            "class_counts": self.class_counts,
            "files": {
                split: [{"name": f.name, "rows": f.rows, "bytes": f.bytes} for f in files]
                for split, files in self.files.items()
            },
            "image_size": self.image_size,
            "source": self.source,
        }
        return json.dumps(doc, indent=1)

    def summary(self) -> str:
        """A few lines for people: splits, row counts and the classes with the fewest rows."""
        lines = [f"data set {self.path}: {self.num_classes} classes, format {self.format_version}"]
        if self.image_size:
            lines.append(f"  image size {self.image_size}x{self.image_size}")
        for split, files in self.files.items():
            size = sum(f.bytes for f in files) / 2**20
            per = self.class_counts[split]
            lo, hi = (min(per), max(per)) if per else (0, 0)
            lines.append(
                f"  {split}: {self.counts[split]} images in {len(files)} shards ({size:.1f} MiB),"
                f" {lo}..{hi} per class"
            )
        return "\n".join(lines)


def _manifest_from_doc(path: str, doc: Any) -> Manifest:
    where = f"{join(path, MANIFEST_NAME)}"
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(f"{where}: format_version={version!r}, expected {FORMAT_VERSION}")
    try:
        classes = tuple(str(c) for c in doc["classes"])
        files = {
            str(split): [ShardFile(str(f["name"]), int(f["rows"]), int(f["bytes"])) for f in fs]
            for split, fs in doc["files"].items()
        }
        counts = {str(k): int(v) for k, v in doc["counts"].items()}
        class_counts = {str(k): [int(n) for n in v] for k, v in doc["class_counts"].items()}
        size = doc.get("image_size")
        manifest = Manifest(
            path=path,
            classes=classes,
            counts=counts,
            class_counts=class_counts,
            files=files,
            image_size=None if size is None else int(size),
            source=dict(doc.get("source") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{where}: malformed ({type(err).__name__}: {err})") from None
    if not classes:
        raise DataError(f"{where}: classes=[]: expected at least one class")
    for split, shard_files in files.items():
        rows = sum(f.rows for f in shard_files)
        if counts.get(split) != rows:
            raise DataError(
                f"{where}: counts[{split!r}]={counts.get(split)!r} but its shards list {rows} rows"
            )
        per = class_counts.get(split)
        if per is None or len(per) != len(classes) or sum(per) != rows:
            raise DataError(
                f"{where}: class_counts[{split!r}] must list {len(classes)} counts"
                f" summing to {rows}"
            )
    return manifest


def open_manifest(path: str) -> Manifest:
    """Read and check a data set's manifest; a missing or malformed one fails with one line."""
    fs, root = resolve(path)
    where = join(root, MANIFEST_NAME)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data path {redact(path)!r}: does not exist")
    try:
        with fs.open_input_stream(where) as f:
            raw = f.read()
    except (FileNotFoundError, OSError, pa.ArrowException):
        raise DataError(
            f"data path {redact(path)!r}: no {MANIFEST_NAME} there; expected a data set written by"
            " `distinception data import` or the generator"
        ) from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{where}: not valid JSON (line {getattr(err, 'lineno', '?')})") from None
    return _manifest_from_doc(path, doc)


def open_parquet(fs: pafs.FileSystem, path: str) -> pq.ParquetFile:
    """A shard's Parquet file with its schema checked against the columns consumers need."""
    try:
        pf = pq.ParquetFile(fs.open_input_file(path))
    except FileNotFoundError:
        raise DataError(f"shard {path}: missing file") from None
    except (OSError, pa.ArrowException) as err:
        first = first_line(err)
        raise DataError(f"shard {path}: not a readable Parquet file ({first})") from None
    schema = pf.schema_arrow
    for want in SCHEMA:
        if want.name not in schema.names:
            raise DataError(f"shard {path}: missing column {want.name!r}; expected {_COLUMNS}")
        got = schema.field(want.name).type
        if got != want.type and not (want.name == "image" and got == pa.large_binary()):
            raise DataError(f"shard {path}: column {want.name!r} is {got}, expected {want.type}")
    return pf


def verify(manifest: Manifest, *, splits: Sequence[str] | None = None, labels: bool = True) -> None:
    """Check the shards against the manifest: files present, sizes, row counts and columns,
    and (with `labels`) every label in range and the per-class counts. Raises `DataError`.

    Labels are one small column, so checking them reads a few bytes per image, never images.
    """
    fs, root = manifest.filesystem()
    for split in splits or manifest.splits:
        seen = np.zeros(manifest.num_classes, dtype=np.int64)
        for shard in manifest.shard_files(split):
            path = join(root, shard.name)
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"{split} shard {path}: missing file (the manifest lists it)")
            if info.size is not None and info.size != shard.bytes:
                raise DataError(
                    f"{split} shard {path}: {info.size} bytes, the manifest says {shard.bytes}"
                )
            pf = open_parquet(fs, path)
            if pf.metadata.num_rows != shard.rows:
                raise DataError(
                    f"{split} shard {path}: {pf.metadata.num_rows} rows,"
                    f" the manifest says {shard.rows}"
                )
            if labels:
                values = pf.read(columns=["label"]).column("label").to_numpy()
                check_labels(values, manifest.num_classes, path)
                seen += np.bincount(values, minlength=manifest.num_classes)
        if labels and seen.tolist() != manifest.class_counts[split]:
            bad = int(np.flatnonzero(seen != np.asarray(manifest.class_counts[split]))[0])
            raise DataError(
                f"{split}: class {manifest.classes[bad]!r} has {int(seen[bad])} rows in the"
                f" shards, the manifest says {manifest.class_counts[split][bad]}"
            )


def check_labels(values: np.ndarray, num_classes: int, where: str) -> None:
    """Fail on the first label outside [0, num_classes)."""
    bad = np.flatnonzero((values < 0) | (values >= num_classes))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"shard {where}: row {row} has label {int(values[row])}, expected 0..{num_classes - 1}"
        )


def iter_batches(
    manifest: Manifest, split: str, *, columns: Sequence[str] = ("image", "label"), rows: int = 256
) -> Iterator[pa.RecordBatch]:
    """A split's rows in stored order, `rows` at a time: memory is one batch, not one file."""
    fs, root = manifest.filesystem()
    for shard in manifest.shard_files(split):
        pf = open_parquet(fs, join(root, shard.name))
        yield from pf.iter_batches(batch_size=rows, columns=list(columns))


def shard_name(split: str, index: int) -> str:
    """The file name of a split's `index`-th shard, relative to the data set root."""
    return f"{split}-{index:05d}.parquet"


def new_dataset_root(out: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, root) of a data set about to be written at `out`, created if missing.

    A root that already holds a manifest is refused: writing over a set would mix its old
    shards with the new manifest's.
    """
    fs, root = resolve(out)
    if fs.get_file_info(join(root, MANIFEST_NAME)).type != pafs.FileType.NotFound:
        raise DataError(
            f"out={redact(out)!r}: already holds a data set; remove it or choose another"
        )
    fs.create_dir(root, recursive=True)
    return fs, root


def write_manifest(manifest: Manifest) -> None:
    """Write `manifest` at its path, last and atomically: a set is complete once it is there."""
    fs, root = manifest.filesystem()
    tmp = join(root, MANIFEST_NAME + ".tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(manifest.to_json().encode())
    fs.move(tmp, join(root, MANIFEST_NAME))


class ShardWriter:
    """Appends rows to one split, rolling to a new file every `shard_rows` rows.

    Rows are buffered one row group at a time, so memory stays at `row_group_rows` images
    however large the split. Image bytes are stored uncompressed: they are JPEG/PNG already.
    Each file is written under a temporary name and moved into place when it is complete, so a
    file with a shard's name is always whole (an interrupted import relies on that to resume).
    """

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        split: str,
        *,
        shard_rows: int = 2048,
        row_group_rows: int = 256,
        first_index: int = 0,
    ) -> None:
        if shard_rows < 1 or row_group_rows < 1:
            raise DataError(
                f"shard_rows={shard_rows}, row_group_rows={row_group_rows}: expected integers >= 1"
            )
        self.fs, self.root, self.split = fs, root, split
        self.shard_rows = shard_rows
        self.row_group_rows = min(row_group_rows, shard_rows)
        self.first_index = first_index
        #: Key-value metadata written into the footer of each file as it is closed.
        self.footer: dict[str, str] = {}
        self.files: list[ShardFile] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink: Any = None
        self._name = ""
        self._rows_in_file = 0
        self._buffer: tuple[list[bytes], list[int], list[str]] = ([], [], [])

    def write(self, image: bytes, label: int, key: str) -> None:
        images, labels, keys = self._buffer
        images.append(image)
        labels.append(label)
        keys.append(key)
        if (
            self._rows_in_file + len(images) >= self.shard_rows
            or len(images) >= self.row_group_rows
        ):
            self._flush()

    def _flush(self) -> None:
        images, labels, keys = self._buffer
        if not images:
            return
        if self._writer is None:
            self._name = shard_name(self.split, self.first_index + len(self.files))
            self._sink = self.fs.open_output_stream(join(self.root, self._name + ".tmp"))
            self._writer = pq.ParquetWriter(
                self._sink, SCHEMA, compression="none", use_dictionary=["label", "key"]
            )
        batch = pa.record_batch(
            [pa.array(images, pa.binary()), pa.array(labels, pa.int32()), pa.array(keys)],
            schema=SCHEMA,
        )
        self._writer.write_batch(batch, row_group_size=self.row_group_rows)
        self._rows_in_file += len(images)
        self._buffer = ([], [], [])
        if self._rows_in_file >= self.shard_rows:
            self._roll()

    def _roll(self) -> None:
        if self._writer is None:
            return
        if self.footer:
            self._writer.add_key_value_metadata(self.footer)
        self._writer.close()
        self._sink.close()
        final = join(self.root, self._name)
        self.fs.move(final + ".tmp", final)
        size = self.fs.get_file_info(final).size
        self.files.append(ShardFile(self._name, self._rows_in_file, int(size or 0)))
        self._writer, self._sink, self._rows_in_file = None, None, 0

    def close(self) -> list[ShardFile]:
        self._flush()
        self._roll()
        return self.files

    def abort(self) -> None:
        """Close the open file without recording it; the data set has no manifest anyway."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None


class DatasetWriter:
    """Writes splits of a data set and, on `close`, the manifest describing them.

    Used as a context manager, an exception leaves no manifest behind, so a half-written set
    can never be opened as if it were whole.
    """

    def __init__(
        self,
        out: str,
        classes: Sequence[str],
        *,
        shard_rows: int = 2048,
        row_group_rows: int = 256,
        image_size: int | None = None,
        source: dict[str, Any] | None = None,
    ) -> None:
        if not classes:
            raise DataError("classes=[]: expected at least one class")
        self.out = out
        self.fs, self.root = new_dataset_root(out)
        self.classes = tuple(classes)
        self.image_size = image_size
        self.source = dict(source or {})
        self._opts = {"shard_rows": shard_rows, "row_group_rows": row_group_rows}
        self._writers: dict[str, ShardWriter] = {}
        self._counts: dict[str, list[int]] = {}

    def write(self, split: str, image: bytes, label: int, key: str) -> None:
        if not 0 <= label < len(self.classes):
            raise DataError(f"label={label}: expected 0..{len(self.classes) - 1} (key {key!r})")
        if split not in self._writers:
            self._writers[split] = ShardWriter(self.fs, self.root, split, **self._opts)
            self._counts[split] = [0] * len(self.classes)
        self._writers[split].write(image, label, key)
        self._counts[split][label] += 1

    def close(self) -> Manifest:
        files = {split: w.close() for split, w in self._writers.items()}
        manifest = Manifest(
            path=self.out,
            classes=self.classes,
            counts={split: sum(c) for split, c in self._counts.items()},
            class_counts=self._counts,
            files=files,
            image_size=self.image_size,
            source=self.source,
        )
        write_manifest(manifest)
        return manifest

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.manifest = self.close()
        else:
            self.abort()


def num_classes(path: str) -> int:
    """How many classes the data set at `path` has (its model's output width)."""
    return open_manifest(path).num_classes
