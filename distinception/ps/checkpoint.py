"""Checkpoint files, written atomically to a local directory or any `pyarrow.fs` URI.

A checkpoint is never half-written: bytes go to a temporary name, are flushed (fsync locally),
and only then renamed over the old file. Loading never unpickles arbitrary objects
(`torch.load(weights_only=True)`), so a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs
import torch


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
    if isinstance(fs, pafs.LocalFileSystem):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def read_bytes(uri: str) -> bytes:
    fs, path = _resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = _resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def save_state(uri: str, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes(uri, buf.getvalue())


def load_state(uri: str) -> dict[str, Any]:
    return torch.load(io.BytesIO(read_bytes(uri)), weights_only=True, map_location="cpu")


def save_json(uri: str, obj: dict[str, Any]) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def load_json(uri: str) -> dict[str, Any]:
    return json.loads(read_bytes(uri))
