import itertools

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distinception.config import AUGMENT_PRESETS, AugmentConfig, ConfigError, from_dict
from distinception.data.loader import TrainStream, eval_batches, num_classes, sample_batches
from distinception.data.shards import DataError, DatasetWriter, open_manifest
from distinception.recipes import get_recipe


def _stream(path, consumer=0, n=1, batch=4, position=None, seed=3, size=24, shuffle="rows"):
    return TrainStream(
        path,
        consumer=consumer,
        num_consumers=n,
        batch_size=batch,
        augment=AugmentConfig(),
        input_size=size,
        seed=seed,
        position=position,
        shuffle=shuffle,
    )


def test_shares_are_disjoint_cover_the_split_and_change_every_epoch(tiny_set):
    streams = [_stream(tiny_set, i, 3) for i in range(3)]
    assert [s.examples_per_epoch for s in streams] == [8, 8, 8]
    for epoch in (0, 1):
        shares = [s.share(epoch) for s in streams]
        rows = np.concatenate(shares)
        assert sorted(rows.tolist()) == list(range(24))
    assert not np.array_equal(streams[0].share(0), streams[0].share(1))
    # Deterministic: a new stream computes the same shares.
    assert np.array_equal(_stream(tiny_set, 1, 3).share(5), streams[1].share(5))
    # Uneven splits differ by at most one row per consumer.
    assert sorted(_stream(tiny_set, i, 5).examples_per_epoch for i in range(5)) == [4, 5, 5, 5, 5]


def test_batches_have_the_contract_shapes_and_labels_follow_the_share(tiny_set):
    s = _stream(tiny_set, 1, 3, batch=5)
    x, y = next(iter(s))
    assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == (5,)
    # The generator stores labels as row index mod classes (train rows 0..23, 3 classes).
    assert y.tolist() == (s.share(0)[:5] % 3).tolist()
    assert -3 < float(x.mean()) < 3  # normalised, not 0..255
    assert s.position() == {"epoch": 0, "offset": 5}


def test_batches_run_across_epoch_boundaries(tiny_set):
    s = _stream(tiny_set, 0, 3, batch=5)  # share of 8
    it = iter(s)
    next(it)
    _, y2 = next(it)
    assert s.epoch == 1 and s.position() == {"epoch": 1, "offset": 2}
    expected = np.concatenate([s.share(0), s.share(1)[:2]])[5:10] % 3
    assert y2.tolist() == expected.tolist()


def test_resume_from_a_position_continues_exactly(tiny_set):
    a = _stream(tiny_set, 2, 3, batch=3)
    it = iter(a)
    for _ in range(4):
        next(it)
    pos = a.position()
    rest = [next(it) for _ in range(3)]
    b = _stream(tiny_set, 2, 3, batch=3, position=pos)
    again = list(itertools.islice(iter(b), 3))
    for (x1, y1), (x2, y2) in zip(rest, again, strict=True):
        assert torch.equal(y1, y2)
        assert torch.equal(x1, x2)


def test_augmentation_does_not_touch_the_callers_rng(tiny_set):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    next(iter(_stream(tiny_set)))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "position, match",
    [
        ({"epoch": 0}, "expected"),
        ({"epoch": -1, "offset": 0}, "epoch >= 0"),
        ({"epoch": 0, "offset": 99}, "offset must be in 0..8"),
    ],
)
def test_bad_positions_fail_clearly(tiny_set, position, match):
    with pytest.raises(DataError, match=match):
        _stream(tiny_set, 0, 3, position=position)


def test_bad_consumer_and_missing_path(tiny_set, tmp_path):
    with pytest.raises(DataError, match="consumer=3, num_consumers=3"):
        _stream(tiny_set, 3, 3)
    with pytest.raises(DataError, match="does not exist"):
        _stream(str(tmp_path / "none"))


def _set_with_corrupt_images(out, good: bytes):
    with DatasetWriter(out, ["a", "b"], shard_rows=4) as w:
        for i in range(10):
            bad = i in (2, 5, 7)
            data = (good[: len(good) // 2] if i == 5 else b"not an image") if bad else good
            w.write("train", data, i % 2, f"k{i}")
            w.write("val", data, i % 2, f"v{i}")


def test_undecodable_images_are_skipped_and_counted(tiny_set, tmp_path):
    good = pq.read_table(open_manifest(tiny_set).path + "/train-00000.parquet")["image"][0].as_py()
    out = str(tmp_path / "bad")
    _set_with_corrupt_images(out, good)
    s = _stream(out, batch=4)
    it = iter(s)
    batches = [next(it) for _ in range(5)]  # 20 images = three epochs of 7 good rows
    assert all(x.shape[0] == 4 for x, _ in batches)
    assert s.skipped == 3  # each bad row counted once, however often it comes round
    views = list(eval_batches(out, input_size=24, batch_size=4))
    assert sum(len(y) for _, y in views) == 7


def test_a_share_without_any_decodable_image_fails_clearly(tmp_path):
    out = str(tmp_path / "allbad")
    with DatasetWriter(out, ["a"]) as w:
        for i in range(3):
            w.write("train", b"junk", 0, f"k{i}")
    with pytest.raises(DataError, match="no decodable image"):
        next(iter(_stream(out)))


def test_labels_out_of_range_in_shards_fail_when_read(tiny_set, tmp_path):
    import json
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_set, out)
    doc = json.loads((out / "manifest.json").read_text())
    doc["classes"] = ["a", "b"]
    doc["class_counts"] = {k: [v[0], sum(v[1:])] for k, v in doc["class_counts"].items()}
    (out / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"label 2, expected 0\.\.1"):
        next(iter(_stream(str(out), batch=24)))


@pytest.mark.parametrize("scheme, v", [("center", 1), ("ten", 10), ("paper144", 144)])
def test_eval_batches_shapes(tiny_set, scheme, v):
    batches = list(eval_batches(tiny_set, input_size=24, batch_size=5, scheme=scheme, limit=7))
    assert [tuple(x.shape) for x, _ in batches] == [(5, v, 3, 24, 24), (2, v, 3, 24, 24)]
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    assert torch.cat([y for _, y in batches]).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_eval_batches_all_rows_and_errors(tiny_set):
    assert sum(len(y) for _, y in eval_batches(tiny_set, input_size=24, batch_size=5)) == 12
    with pytest.raises(DataError, match="scheme='five'"):
        eval_batches(tiny_set, input_size=24, batch_size=5, scheme="five")
    assert num_classes(tiny_set) == 3


def test_every_preset_recipe_streams(tiny_set):
    for augment in AUGMENT_PRESETS.values():
        s = TrainStream(
            tiny_set,
            consumer=0,
            num_consumers=2,
            batch_size=3,
            augment=augment,
            input_size=24,
            seed=0,
        )
        x, _ = next(iter(s))
        assert torch.isfinite(x).all()


def _damaged_png() -> bytes:
    """A PNG whose compressed pixels are garbage but whose chunk checksums are all valid."""
    import io
    import struct
    import zlib

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 20, 3), np.uint8)).save(
        buf, "PNG"
    )
    data = bytearray(buf.getvalue())
    data[100:140] = bytes(40)
    out, i = bytearray(data[:8]), 8
    while i + 12 <= len(data):
        n = struct.unpack(">I", data[i : i + 4])[0]
        kind, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + n]
        out += data[i : i + 8] + body + struct.pack(">I", zlib.crc32(kind + body))
        i += 12 + n
    return bytes(out)


def test_a_damaged_png_is_skipped_not_fatal(tiny_set, tmp_path):
    good = pq.read_table(open_manifest(tiny_set).path + "/train-00000.parquet")["image"][0].as_py()
    out = str(tmp_path / "png")
    with DatasetWriter(out, ["a"]) as w:
        w.write("train", _damaged_png(), 0, "bad")
        for i in range(3):
            w.write("train", good, 0, f"k{i}")
    s = _stream(out, batch=4)  # a batch of 4 from 3 good rows: the damaged one is met
    x, _ = next(iter(s))
    assert x.shape[0] == 4 and s.skipped == 1


def test_a_shard_missing_under_a_stream_fails_with_one_line(tiny_set, tmp_path):
    import os
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_set, out)
    os.remove(out / open_manifest(str(out)).files["train"][1].name)
    with pytest.raises(DataError, match=r"train-00001\.parquet: missing file") as err:
        next(iter(_stream(str(out))))
    assert "\n" not in str(err.value)


def _set_stored_class_by_class(out, classes=4, per_class=100):
    """Class k is a flat grey image of level 60k, written class after class, as a folder tree
    imported without shuffling is stored."""
    from torchvision.io import encode_png

    with DatasetWriter(
        out, [str(k) for k in range(classes)], shard_rows=150, row_group_rows=25
    ) as w:
        for k in range(classes):
            png = encode_png(torch.full((3, 16, 16), 60 * k, dtype=torch.uint8)).numpy().tobytes()
            for i in range(per_class):
                w.write("train", png, k, f"{k}/{i}")


def test_bn_sample_spans_a_split_stored_class_by_class(tmp_path):
    """BatchNorm statistics are averages of per-batch statistics: a batch of one class has
    almost no variance, so only batches drawn across the split give the split's variance."""
    from distinception.config import from_dict
    from distinception.data.loader import bn_batches

    out = str(tmp_path / "sorted")
    _set_stored_class_by_class(out)
    everything = torch.cat(
        [x[:, 0] for x, _ in eval_batches(out, split="train", input_size=16, batch_size=50)]
    )
    split_var = everything[:, 0].var().item()
    # The first rows, in stored order, are what BN was recomputed on before: one class a batch.
    prefix = [
        x[:, 0] for x, _ in eval_batches(out, split="train", input_size=16, batch_size=16, limit=64)
    ]
    assert np.mean([b[:, 0].var().item() for b in prefix]) < 0.05 * split_var
    sample = list(sample_batches(out, input_size=16, batch_size=16, count=64, seed=0))
    assert [len(b) for b in sample] == [16] * 4
    assert np.mean([b[:, 0].var().item() for b in sample]) > 0.6 * split_var
    assert sample[0].shape == (16, 3, 16, 16) and sample[0].dtype == torch.float32
    # The same seed gives the same sample; the evaluation's recompute uses such a sample.
    again = list(sample_batches(out, input_size=16, batch_size=16, count=64, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(sample, again, strict=True))
    cfg = from_dict({"model": {"input_size": 32}, "data": {"eval_batch_size": 32}})
    used = list(bn_batches(cfg, out))
    assert sum(len(b) for b in used) == 256 and used[0].shape[-1] == 32
    assert np.mean([b[:, 0].var().item() for b in used]) > 0.6 * split_var
    with pytest.raises(DataError, match="count=0: expected an integer >= 1"):
        next(sample_batches(out, input_size=16, batch_size=16, count=0))


@pytest.fixture(scope="module")
def grouped_set(tmp_path_factory) -> str:
    """3 classes, 60 training rows in row groups of 4 (files of 12 rows): 15 row groups."""
    from torchvision.io import encode_jpeg

    out = str(tmp_path_factory.mktemp("grouped") / "set")
    gen = torch.Generator().manual_seed(0)
    with DatasetWriter(out, ["a", "b", "c"], shard_rows=12, row_group_rows=4) as writer:
        for split, n in (("train", 60), ("val", 6)):
            for i in range(n):
                img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=gen)
                writer.write(split, encode_jpeg(img).numpy().tobytes(), i % 3, f"{split}/{i}")
    return out


def _blocks(path, consumer=0, n=1, batch=4, position=None):
    return _stream(path, consumer, n, batch, position, size=16, shuffle="blocks")


def test_blocks_deal_whole_row_groups_and_read_each_once_a_window_at_a_time(grouped_set):
    groups = {frozenset(range(g, g + 4)) for g in range(0, 60, 4)}
    streams = [_blocks(grouped_set, i, 3) for i in range(3)]
    for epoch in (0, 1):
        shares = [s.share(epoch) for s in streams]
        # Disjoint, together the split, each a union of whole row groups (5 of the 15).
        assert sorted(np.concatenate(shares).tolist()) == list(range(60))
        for share in shares:
            held = {g for g in groups if g <= set(share.tolist())}
            assert len(held) == 5 and set().union(*held) == set(share.tolist())
    assert not np.array_equal(streams[0].share(0), streams[0].share(1))
    # Rows are shuffled within a window, not left in stored order.
    assert streams[0].share(0).tolist() != sorted(streams[0].share(0).tolist())

    # One consumer: every read is one window of at most 4 row groups, the next one is read
    # ahead while this one is decoded, and an epoch reads each row once.
    s = _blocks(grouped_set)
    reads: list[list[int]] = []
    read = s._reader.read
    s._reader.read = lambda rows: (reads.append(rows.tolist()), read(rows))[1]
    it = iter(s)
    _, y = next(it)
    assert y.tolist() == [r % 3 for r in s.share(0)[:4]]  # labels follow the share
    assert len(reads) == 2 and s._ahead is not None  # the first window and the one after it
    for _ in range(14):  # 60 rows: one epoch
        next(it)
    assert s.epoch == 1 and s.position() == {"epoch": 1, "offset": 0}
    first_epoch = [r for rows in reads[:4] for r in rows]
    assert sorted(first_epoch) == list(range(60))
    assert all(len(rows) <= 16 for rows in reads) and len(s._images) <= 16


def test_blocks_resume_from_a_position_continues_exactly(grouped_set):
    a = _blocks(grouped_set, 1, 2, batch=5)
    it = iter(a)
    for _ in range(9):  # past a window and an epoch boundary (a share of 28 or 32 rows)
        next(it)
    pos = a.position()
    assert pos["epoch"] == 1
    rest = [next(it) for _ in range(4)]
    b = _blocks(grouped_set, 1, 2, batch=5, position=pos)
    for (x1, y1), (x2, y2) in zip(rest, itertools.islice(iter(b), 4), strict=True):
        assert torch.equal(y1, y2) and torch.equal(x1, x2)


def test_blocks_need_a_row_group_per_consumer(tiny_set):
    with pytest.raises(DataError, match="3 row groups: too few for num_consumers=4"):
        _stream(tiny_set, 0, 4, shuffle="blocks")
    with pytest.raises(ConfigError, match=r"^data\.shuffle='random': expected one of rows, blocks"):
        from_dict({"data": {"shuffle": "random"}}, get_recipe("tiny"))
