"""The same-node channel: weights and gradients in shared memory rather than the object store.

Ray's object store is shared memory too, but its objects are immutable: every published version
and every pushed gradient is a fresh allocation, written once (page faults included), read, and
freed. Between a shard and a replica on the same node that costs several copies of the vector per
round trip. Here each shard keeps its weights in one mapped file that its optimizer updates in
place, and a CPU replica's backward accumulates straight into one of a small ring of mapped
gradient slots, which the shards' optimizers read where it lies: a pull is one copy, a push is
no copy at all, just the update. A push is announced by ringing the shard's doorbell (a Unix
socket in the same directory) rather than by a Ray call: ~0.5 ms there and back against ~2.5 ms
measured on the reference machine.

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
import json
import mmap
import os
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

#: Bytes before the values: the version (int64) first; page-aligned values after.
HEADER = 4096
PREFIX = "distinception-"
LOCK = ".lock"
#: A job directory nobody has claimed for this long was abandoned while being created.
UNCLAIMED_S = 600.0

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

    A directory without a lock file is left alone while young (it is being created)."""
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
            with contextlib.suppress(OSError):
                if time.time() - os.path.getmtime(path) > UNCLAIMED_S:
                    remove(path)
                    removed.append(path)
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


# -- doorbells: a same-node push's request and answer, without a Ray call --------------------
#: Requests and answers are small JSON objects; anything longer is not ours and is dropped.
MAX_MESSAGE = 1 << 16


def _send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(left)
        if not chunk:
            raise ConnectionError("doorbell closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive_message(sock: socket.socket) -> dict[str, Any]:
    (n,) = struct.unpack("!I", _receive_exactly(sock, 4))
    if n > MAX_MESSAGE:
        raise ConnectionError(f"doorbell message of {n} bytes, expected at most {MAX_MESSAGE}")
    message = json.loads(_receive_exactly(sock, n))
    if not isinstance(message, dict):
        raise ConnectionError("doorbell message is not a JSON object")
    return message


class Doorbell:
    """A replica's connection to one shard's doorbell (a Unix socket in the job directory).

    A Ray call to a shard took ~2.5 ms there and back on the reference machine, nearly as long as
    applying a 26 MB gradient slice; a doorbell took ~0.5 ms, mostly waking the shard's thread.
    A push rings every shard's bell first and then collects the answers, so the shards apply
    their slices in parallel."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise

    def ring(self, message: dict[str, Any]) -> None:
        _send_message(self.sock, message)

    def answer(self) -> dict[str, Any]:
        return _receive_message(self.sock)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class DoorbellServer:
    """A shard's doorbell: answers each request with `handle(request)`, one thread per replica
    connected. `handle` must be safe to call beside the shard's Ray methods (the shard holds
    one lock around its core for both)."""

    def __init__(self, path: str, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.path = path
        self.handle = handle
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o600)
        self.sock.listen(64)
        self._closed = False
        threading.Thread(target=self._accept, name="doorbell", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._closed:
                try:
                    request = _receive_message(conn)
                    _send_message(conn, self.handle(request))
                except (OSError, ValueError):
                    return  # the replica went away, or sent something that is not ours

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


# -- the two ends of the same-node transport ----------------------------------------------------
class ShardFiles:
    """A shard's end: its weights in a mapped file, its doorbell, and the replicas' gradient
    slots it reads its slice from. `weights` is None when this node offers no usable shared
    memory; replicas then reach the shard through the object store only."""

    def __init__(self, directory: str, index: int, incarnation: str, size: int) -> None:
        self.directory = directory
        self.name = f"shard-{index}-{incarnation}"
        self.doorbell: DoorbellServer | None = None
        self._grads: dict[str, SharedVector] = {}
        self.weights = self._share(index, size)

    def _share(self, index: int, size: int) -> SharedVector | None:
        if not self.directory or not available():
            return None
        try:
            self._claim = claim(self.directory)  # held while this process lives
            sweep(keep=self.directory)  # directories of jobs whose processes are all gone
            remove_matching(self.directory, f"shard-{index}-")  # a killed predecessor's files
            return SharedVector(os.path.join(self.directory, self.name + ".w"), size, create=True)
        except OSError:
            return None

    def listen(self, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Open the doorbell, answering with `handle` (only once the shard can answer)."""
        if self.weights is None:
            return
        with contextlib.suppress(OSError):  # without one, replicas push by Ray calls
            self.doorbell = DoorbellServer(
                os.path.join(self.directory, self.name + ".sock"), handle
            )

    def gradient(self, path: str) -> torch.Tensor | None:
        """The flat gradient in the replica slot `path`, mapped once and kept; None for a path
        that is not a replica slot of this job or cannot be mapped."""
        mapped = self._grads.get(path)
        if mapped is not None:
            return mapped.values
        real = os.path.realpath(path)
        if (
            not self.directory
            or os.path.dirname(real) != os.path.realpath(self.directory)
            or not os.path.basename(real).startswith("replica-")
        ):
            return None
        # Forget the slots of replicas that have gone (their files removed) before mapping more.
        for gone in [p for p in self._grads if not os.path.exists(p)]:
            self._grads.pop(gone).close()
        try:
            size = os.path.getsize(real)
            numel = max(0, (size - HEADER) // 4)
            mapped = SharedVector(real, numel)
        except (OSError, ValueError):
            return None
        self._grads[path] = mapped
        return mapped.values

    def hang_up(self) -> None:
        if self.doorbell is not None:
            self.doorbell.close()

    def unmap_gradients(self) -> None:
        for mapped in self._grads.values():
            mapped.close()
        self._grads.clear()


class NodeShards:
    """A replica's or the averager's end: the weights files of the shards on its own node,
    mapped, and their doorbells, connected on first use (by the pushing thread). A shard with
    no file here (None) is reached through the object store instead."""

    def __init__(
        self, count: int, enabled: bool, timeout: float, tally: Callable[[str], None]
    ) -> None:
        self.enabled = enabled and available()
        self.timeout = timeout
        self.tally = tally
        self.vectors: list[SharedVector | None] = [None] * count
        self.bell_paths = [""] * count
        self.bells: list[Doorbell | None] = [None] * count
        self.directory = ""

    def link(self, s: int, path: str, size: int, bell: str, here: bool) -> None:
        """Attach shard `s` as it describes itself; a file already mapped is kept."""
        self.bell_paths[s] = bell if here else ""
        old = self.vectors[s]
        if old is not None and old.path == path:
            return
        if old is not None:
            old.close()
        self.vectors[s] = None
        if self.enabled and path and here:
            try:
                self.vectors[s] = SharedVector(path, size)
                self.directory = os.path.dirname(path)
            except (OSError, ValueError):
                self.tally("shm_unavailable")

    def gone(self) -> bool:
        """Whether a mapped shard file has been removed (its shard was restarted)."""
        return any(v is not None and not os.path.exists(v.path) for v in self.vectors)

    def bell(self, s: int) -> Doorbell | None:
        """The doorbell of shard `s`, connected on first use (None: push by a Ray call)."""
        bell, path = self.bells[s], self.bell_paths[s]
        if bell is not None and bell.path != path:
            bell.close()
            bell = self.bells[s] = None
        if bell is None and path and self.enabled:
            try:
                bell = self.bells[s] = Doorbell(path, self.timeout)
            except OSError:
                self.tally("doorbell_failed")
        return bell

    def hang_up(self, s: int) -> None:
        bell = self.bells[s]
        if bell is not None:
            bell.close()
        self.bells[s] = None

    def gradient_slots(self, owner: str, numel: int, count: int) -> list[SharedVector]:
        """`count` fresh gradient slots named after `owner` in this node's job directory, once a
        shard here is known (none before); files a predecessor of `owner` left are removed."""
        if not self.directory:
            return []
        self._claim = claim(self.directory)  # held while this process lives
        remove_matching(self.directory, f"{owner}-")
        name = f"{owner}-{uuid.uuid4().hex[:12]}"
        return [
            SharedVector(os.path.join(self.directory, f"{name}-{k}.g"), numel, create=True)
            for k in range(count)
        ]
