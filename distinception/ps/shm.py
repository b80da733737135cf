"""Same-node transport: weights and gradients in shared memory rather than the object store.

Ray's object store is shared memory too, but its objects are immutable: every published version
and every pushed gradient is a fresh allocation, written once (page faults included), read, and
freed. Between a shard and a replica on the same node that costs several copies of the vector per
round trip. Here each shard keeps its weights in one mapped file that its optimizer updates in
place, and each replica writes its gradients into a small ring of mapped files that the shards
read from directly: a pull is one copy, a push is one copy plus the update.

A shard's weights are guarded by a reader-writer lock (`flock` on the file): readers hold it
shared while they copy, the shard holds it exclusively while its optimizer steps, so a pull never
sees a half-applied update and always knows the version it copied. Gradient slots need no lock:
a replica reuses a slot only after every shard has answered the push that used it.

Files live in one directory per job (`job_dir`), under /dev/shm where it exists. A restarted
owner removes its predecessor's files; the shards and the coordinator remove the directory at the
end of the job. A job whose driver was killed cannot clean up, so every process that uses a
directory holds a shared `flock` on its `.lock` file for as long as it lives (`claim`), and each
new shard removes the directories on its node that no live process holds (`sweep`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator

import numpy as np
import torch

#: Bytes before the values: the version (int64) first; page-aligned values after.
HEADER = 4096
PREFIX = "distinception-"
LOCK = ".lock"

try:
    import fcntl
except ImportError:  # not on Windows: the object store carries everything there
    fcntl = None  # type: ignore[assignment]


def root() -> str:
    """Where the job directories go: /dev/shm (memory, never written back to disk) if usable."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        return shm
    return tempfile.gettempdir()


def available() -> bool:
    return fcntl is not None


def job_dir(token: str | None = None) -> str:
    """A fresh directory name for one job's files (created by whichever actor needs it first)."""
    return os.path.join(root(), PREFIX + (token or uuid.uuid4().hex[:12]))


def remove(path: str) -> None:
    """Remove a job directory and everything in it (mapped views stay valid until closed)."""
    if path and os.path.basename(path).startswith(PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def claim(directory: str) -> int:
    """Create `directory` if needed and mark it in use by this process until the process ends
    (the returned descriptor is meant to stay open: the kernel drops the lock on exit)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def sweep(keep: str = "") -> list[str]:
    """Remove the job directories under `root()` that no live process holds; return them.

    A directory without a lock file is left alone (it is being created)."""
    removed: list[str] = []
    names: list[str] = []
    base = root()
    with contextlib.suppress(FileNotFoundError):
        names = os.listdir(base)
    for name in names if fcntl is not None else []:
        path = os.path.join(base, name)
        if not name.startswith(PREFIX) or path == keep or not os.path.isdir(path):
            continue
        try:
            fd = os.open(os.path.join(path, LOCK), os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # somebody holds it
        finally:
            os.close(fd)
        remove(path)
        removed.append(path)
    return removed


def remove_matching(directory: str, prefix: str, keep: str = "") -> None:
    """Remove the files in `directory` whose names start with `prefix`, except `keep`: a
    restarted owner clearing what its killed predecessor left."""
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(prefix) and path != keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


class SharedVector:
    """A float32 vector and its version in a file mapped into every process that opens it.

    `create` makes the file (it must not exist) and touches every page, so the first update does
    not pay for page faults; otherwise the file is opened and its size must match `numel`.
    """

    def __init__(self, path: str, numel: int, create: bool = False) -> None:
        if fcntl is None:
            raise OSError("shared-memory transport needs fcntl (POSIX)")
        self.path = path
        size = HEADER + 4 * numel
        if create:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.ftruncate(fd, size)
        else:
            fd = os.open(path, os.O_RDWR)
            actual = os.fstat(fd).st_size
            if actual != size:
                os.close(fd)
                raise ValueError(f"{path}: {actual} bytes, expected {size} ({numel} values)")
        self._fd = fd
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._header = np.frombuffer(self._mm, dtype=np.int64, count=1)
        self.values = torch.from_numpy(
            np.frombuffer(self._mm, dtype=np.float32, count=numel, offset=HEADER)
        )
        self._local = threading.Lock()  # flock is per open file, not per thread
        self.owner = create
        if create:
            self.values.zero_()

    @property
    def numel(self) -> int:
        return self.values.numel()

    @property
    def version(self) -> int:
        return int(self._header[0])

    @version.setter
    def version(self, value: int) -> None:
        self._header[0] = value

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[SharedVector]:
        with self._local:
            fcntl.flock(self._fd, mode)
            try:
                yield self
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def reading(self) -> contextlib.AbstractContextManager[SharedVector]:
        """Held while copying the values out: no update is applied meanwhile."""
        return self._locked(fcntl.LOCK_SH)

    def writing(self) -> contextlib.AbstractContextManager[SharedVector]:
        """Held while updating values and version: no reader copies meanwhile."""
        return self._locked(fcntl.LOCK_EX)

    def close(self, unlink: bool | None = None) -> None:
        """Unmap (once no tensor views are left) and, for the owner by default, remove the file."""
        if unlink if unlink is not None else self.owner:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.values = torch.empty(0)
        self._header = np.zeros(1, dtype=np.int64)
        with contextlib.suppress(BufferError):  # a caller still holds a view: unmapped at GC
            self._mm.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
