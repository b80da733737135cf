"""Checkpoint files, written atomically to a local directory or any `pyarrow.fs` URI.

A checkpoint is never half-written: bytes go to a temporary name, are flushed (fsync locally),
and only then renamed over the old file. A process killed between the write and the rename
leaves its temporary behind (no handler runs on SIGKILL); the next successful save of the same
file removes it. Loading never unpickles arbitrary objects
(`torch.load(weights_only=True)`), so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import uuid
import zipfile
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import torch

from distinception.config import ConfigError


class CheckpointError(ConfigError):
    """A checkpoint file that is missing, damaged or not a weights-only checkpoint (one line)."""


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = _resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            # The rename itself is durable only once the directory entry is on disk.
            fd = os.open(parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)
    except BaseException:
        # A failed write leaves the previous file as it was and no temporary behind.
        with contextlib.suppress(OSError, pa.ArrowException):
            fs.delete_file(tmp)
        raise
    _remove_leftovers(fs, parent, path)


def _remove_leftovers(fs: pafs.FileSystem, parent: str, path: str) -> None:
    """Delete `path`'s temporaries from writes that were killed before their rename. Each file
    has one writer at a time (a shard, the averager or the coordinator), so any temporary of it
    still present after our own rename is an orphan."""
    prefix = path + ".tmp-"
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent))
    except (OSError, pa.ArrowException):
        return
    for info in infos:
        if info.type == pafs.FileType.File and info.path.startswith(prefix):
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(info.path)


def read_bytes(uri: str) -> bytes:
    fs, path = _resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (OSError, pa.ArrowException) as err:
        raise CheckpointError(f"checkpoint {uri}: cannot be read ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def exists(uri: str) -> bool:
    fs, path = _resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def save_state(uri: str, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(uri, buf.getvalue())


def load_state(uri: str) -> dict[str, Any]:
    data = read_bytes(uri)
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        # weights_only refuses any pickle that would import or call something: a tampered file
        # fails here instead of running code.
        raise CheckpointError(
            f"checkpoint {uri}: not a weights-only torch checkpoint ({_first_line(err)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {uri}: holds a {type(state).__name__}, expected a dict")
    return state


def save_json(uri: str, obj: dict[str, Any]) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def load_json(uri: str) -> dict[str, Any]:
    try:
        doc = json.loads(read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {uri}: not valid JSON ({_first_line(err)})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"checkpoint {uri}: expected a JSON object")
    return doc


def check_loadable(directory: str, names: list[str]) -> None:
    """Load each named file that exists, so a damaged checkpoint fails before any actor starts."""
    for name in names:
        uri = join(directory, name)
        if exists(uri):
            load_state(uri)
