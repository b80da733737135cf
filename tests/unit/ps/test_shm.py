"""The same-node shared-memory transport without Ray: vectors, locks, clean-up, and the shard and
replica cores working on shared buffers exactly as on private ones."""

import os
import threading

import pytest
import torch

from distinception.config import ModelConfig, OptimConfig, PSConfig
from distinception.ps.layout import ParamLayout
from distinception.ps.replica import ReplicaCore
from distinception.ps.shard import ShardCore
from distinception.ps.transport import shm

pytestmark = pytest.mark.skipif(not shm.available(), reason="needs fcntl (POSIX)")


@pytest.fixture
def job_dir():
    path = shm.job_dir()
    yield path
    shm.remove(path)
    assert not os.path.exists(path)


def test_a_vector_written_by_its_owner_is_seen_by_another_mapping(job_dir):
    path = os.path.join(job_dir, "shard-0-a.w")
    owner = shm.SharedVector(path, 1000, create=True)
    reader = shm.SharedVector(path, 1000)
    assert float(reader.values.abs().sum()) == 0 and reader.version == 0
    with owner.writing():
        owner.values.copy_(torch.arange(1000.0))
        owner.version = 7
    with reader.reading():
        torch.testing.assert_close(reader.values, torch.arange(1000.0))
        assert reader.version == 7
    reader.close()
    assert os.path.exists(path)  # only the owner removes the file
    owner.close()
    assert not os.path.exists(path)


def test_opening_checks_the_size_and_creating_never_overwrites(job_dir):
    path = os.path.join(job_dir, "shard-0-a.w")
    owner = shm.SharedVector(path, 10, create=True)
    with pytest.raises(ValueError, match=r"4136 bytes, expected 4140 \(11 values\)") as err:
        shm.SharedVector(path, 11)
    assert path in str(err.value)
    with pytest.raises(FileExistsError):
        shm.SharedVector(path, 10, create=True)
    owner.close()


def test_a_reader_never_copies_while_an_update_is_being_applied(job_dir):
    path = os.path.join(job_dir, "shard-0-a.w")
    owner = shm.SharedVector(path, 4, create=True)
    reader = shm.SharedVector(path, 4)
    order: list[str] = []
    writing = threading.Event()

    def read() -> None:
        writing.wait()
        with reader.reading():
            order.append(f"read {reader.version}")

    thread = threading.Thread(target=read)
    thread.start()
    with owner.writing():
        writing.set()
        thread.join(timeout=0.5)  # the reader is blocked on the lock meanwhile
        owner.version = 1
        order.append("written")
    thread.join(timeout=10)
    assert order == ["written", "read 1"]
    reader.close()
    owner.close()


def test_sweep_removes_only_directories_no_live_process_holds(job_dir):
    other = shm.job_dir()
    held, unheld = shm.claim(job_dir), shm.claim(other)
    shm.SharedVector(os.path.join(other, "shard-0-x.w"), 8, create=True)
    os.close(unheld)  # as when every process of that job was killed
    removed = shm.sweep()
    assert other in removed and not os.path.exists(other)
    assert os.path.isdir(job_dir) and job_dir not in removed
    os.close(held)
    # One never claimed (its creator died first) is removed once it is old, not before.
    young, old = shm.job_dir(), shm.job_dir()
    for path in (young, old):
        os.makedirs(path)
    os.utime(old, (0, 0))
    removed = shm.sweep(keep=job_dir)
    assert old in removed and young not in removed and os.path.isdir(young)
    shm.remove(young)


def test_remove_only_touches_job_directories(tmp_path):
    keep = tmp_path / "not-a-job"
    keep.mkdir()
    shm.remove(str(keep))
    assert keep.exists()


def _layout() -> ParamLayout:
    return ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(4, 3)))  # 12 + 3


def test_a_shard_on_shared_memory_updates_and_publishes_like_a_private_one(job_dir):
    layout = _layout()
    ps, opt = PSConfig(), OptimConfig(lr=0.1, momentum=0.9, weight_decay=0.01)
    shared = shm.SharedVector(os.path.join(job_dir, "shard-0-a.w"), layout.total, create=True)
    a = ShardCore(0, 0, layout.total, layout, torch.ones(layout.total), ps, opt, 100, shared=shared)
    b = ShardCore(0, 0, layout.total, layout, torch.ones(layout.total), ps, opt, 100)
    reader = shm.SharedVector(shared.path, layout.total)
    slots = [torch.arange(15.0), -torch.arange(15.0) / 3]  # two replica slots, borrowed in turn
    for k in range(4):
        g = slots[k % 2]
        a.apply(g, a.version, examples=1, fingerprint=a.fingerprint, borrow=True)
        b.apply(g.clone(), b.version, examples=1, fingerprint=b.fingerprint)
        with reader.reading():
            torch.testing.assert_close(reader.values, b.flat)
            assert reader.version == b.version == k + 1
    torch.testing.assert_close(slots[0], torch.arange(15.0))  # borrowed, never written
    # A scaled push (here: over the clip norm) is copied, never scaled in the replica's slot.
    clip = OptimConfig(clip_norm=1.0)
    c = ShardCore(0, 0, layout.total, layout, torch.ones(layout.total), ps, clip, 1)
    c.apply(slots[0], 0, examples=1, fingerprint=c.fingerprint, borrow=True)
    torch.testing.assert_close(slots[0], torch.arange(15.0))
    # Restoring a checkpoint publishes the restored version with the restored weights.
    state = b.state_dict()
    a.apply(slots[0], a.version, examples=1, fingerprint=a.fingerprint, borrow=True)
    a.load_state_dict(state)
    assert reader.version == 4
    torch.testing.assert_close(reader.values, b.flat)
    reader.close()


def test_a_replica_hands_out_its_gradient_slot_and_accumulates_in_the_next():
    torch.manual_seed(0)
    core = ReplicaCore(ModelConfig(variant="bn", width=0.125, input_size=32), 4, iter(()))
    core.model.eval()
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)
    core.compute(batch)
    expected, _, _ = core.take_gradient()
    slots = [torch.full((core.layout.total,), 5.0) for _ in range(2)]
    core.compute(batch)
    core.move_gradient(slots[0])  # what is accumulated so far moves along
    out, examples, _ = core.take_gradient(swap=slots[1])
    assert out is slots[0] and examples == 8
    torch.testing.assert_close(out, expected)
    assert float(slots[1].abs().sum()) == 0  # zeroed before accumulation moves there
    core.compute(batch)
    torch.testing.assert_close(slots[1], expected)  # backward wrote into the slot
    torch.testing.assert_close(out, expected)  # and left the handed-out one alone


def test_a_doorbell_answers_each_request_and_drops_what_is_not_ours(job_dir):
    import socket
    import struct

    os.makedirs(job_dir)
    seen: list[dict] = []

    def handle(request: dict) -> dict:
        seen.append(request)
        return {"accepted": True, "n": request["n"]}

    server = shm.DoorbellServer(os.path.join(job_dir, "shard-0-a.sock"), handle)
    bells = [shm.Doorbell(server.path, timeout=10) for _ in range(2)]
    for n, bell in enumerate(bells):
        bell.ring({"n": n})  # both rung before either answer is read
    assert [bell.answer() for bell in bells] == [
        {"accepted": True, "n": 0},
        {"accepted": True, "n": 1},
    ]
    # A message over the size limit, or not JSON, closes that connection and nothing else.
    for junk in (struct.pack("!I", shm.MAX_MESSAGE + 1), struct.pack("!I", 3) + b"{x]"):
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(10)
        raw.connect(server.path)
        raw.sendall(junk)
        assert raw.recv(1) == b""  # closed by the server
        raw.close()
    bells[0].ring({"n": 5})
    assert bells[0].answer()["n"] == 5 and len(seen) == 3
    server.close()
    assert not os.path.exists(server.path)
    with pytest.raises(OSError):
        shm.Doorbell(server.path, timeout=1)
    for bell in bells:
        bell.close()
