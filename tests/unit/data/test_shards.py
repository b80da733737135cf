import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distinception.config import ConfigError
from distinception.data.shards import (
    MANIFEST_NAME,
    DataError,
    DatasetWriter,
    iter_batches,
    num_classes,
    open_manifest,
    verify,
)


def _write(out, rows=25, shard_rows=10, row_group_rows=4):
    with DatasetWriter(
        out, ["a", "b", "c"], shard_rows=shard_rows, row_group_rows=row_group_rows, image_size=8
    ) as w:
        for i in range(rows):
            w.write("train", f"img{i}".encode(), i % 3, f"k{i}")
        w.write("val", b"v0", 2, "v0")
    return w.manifest


def test_round_trip_keeps_rows_in_order_and_rolls_files(tmp_path):
    out = str(tmp_path / "set")
    _write(out)
    m = open_manifest(out)
    assert m.classes == ("a", "b", "c") and m.num_classes == 3 and num_classes(out) == 3
    assert m.counts == {"train": 25, "val": 1}
    assert m.class_counts["train"] == [9, 8, 8]
    assert [f.rows for f in m.files["train"]] == [10, 10, 5]
    assert all(f.bytes == os.path.getsize(tmp_path / "set" / f.name) for f in m.files["train"])
    assert m.image_size == 8
    rows = [
        r
        for b in iter_batches(m, "train", columns=("image", "label", "key"))
        for r in b.to_pylist()
    ]
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(25)]
    assert rows[7] == {"image": b"img7", "label": 1, "key": "k7"}
    # Memory bound while writing: one row group at a time.
    meta = pq.ParquetFile(tmp_path / "set" / m.files["train"][0].name).metadata
    assert max(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) <= 4
    verify(m)


def test_digest_names_the_bytes_not_the_place(tmp_path):
    """Benchmark tables print it to tell apart sets generated from one config that differ."""
    _write(str(tmp_path / "one"))
    _write(str(tmp_path / "two"))
    with DatasetWriter(
        str(tmp_path / "three"), ["a", "b", "c"], shard_rows=10, row_group_rows=4, image_size=8
    ) as w:
        for i in range(25):
            w.write("train", f"img{i}".encode() if i != 7 else b"imgX", i % 3, f"k{i}")
        w.write("val", b"v0", 2, "v0")
    one, two, three = (open_manifest(str(tmp_path / n)).digest() for n in ("one", "two", "three"))
    assert one == two and len(one) == 12 and int(one, 16) >= 0
    assert three != one


def test_manifest_is_plain_json(tmp_path):
    _write(str(tmp_path / "set"))
    doc = json.loads((tmp_path / "set" / MANIFEST_NAME).read_text())
    assert doc["format_version"] == 1
    assert set(doc) >= {"classes", "counts", "class_counts", "files", "image_size"}
    assert doc["files"]["val"][0]["rows"] == 1


def test_file_uri_reads_and_writes(tmp_path):
    uri = (tmp_path / "viauri").as_uri()
    assert uri.startswith("file://")
    _write(uri)
    m = open_manifest(uri)
    assert m.counts["train"] == 25
    verify(m)
    assert open_manifest(str(tmp_path / "viauri")).counts == m.counts


def test_an_exception_while_writing_leaves_no_manifest(tmp_path):
    with pytest.raises(RuntimeError), DatasetWriter(str(tmp_path / "s"), ["a"]) as w:
        w.write("train", b"x", 0, "k")
        raise RuntimeError("interrupted")
    with pytest.raises(DataError, match=r"no manifest\.json"):
        open_manifest(str(tmp_path / "s"))


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    assert isinstance(err.value, ConfigError) and isinstance(err.value, ValueError)
    return msg


def test_missing_path_fails_with_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        open_manifest(str(tmp_path / "nowhere"))
    assert "does not exist" in _one_line(err)


def test_missing_shard_file(tmp_path):
    m = _write(str(tmp_path / "set"))
    os.remove(tmp_path / "set" / m.files["train"][1].name)
    with pytest.raises(DataError) as err:
        verify(open_manifest(str(tmp_path / "set")))
    assert "missing file" in _one_line(err) and "train-00001" in str(err.value)


def test_manifest_row_count_disagrees_with_shards(tmp_path):
    m = _write(str(tmp_path / "set"))
    path = tmp_path / "set" / m.files["train"][0].name
    table = pq.read_table(path).slice(0, 9)
    pq.write_table(table, path)
    with pytest.raises(DataError) as err:
        verify(open_manifest(str(tmp_path / "set")))
    assert "manifest says" in _one_line(err)


def test_manifest_counts_that_do_not_add_up(tmp_path):
    _write(str(tmp_path / "set"))
    doc = json.loads((tmp_path / "set" / MANIFEST_NAME).read_text())
    doc["counts"]["train"] = 99
    (tmp_path / "set" / MANIFEST_NAME).write_text(json.dumps(doc))
    with pytest.raises(DataError) as err:
        open_manifest(str(tmp_path / "set"))
    assert "counts['train']=99" in _one_line(err)


def _rewrite_shard(path, table):
    pq.write_table(table, path)
    return os.path.getsize(path)


def _patch_bytes(root, name, size):
    doc = json.loads((root / MANIFEST_NAME).read_text())
    for f in doc["files"]["train"]:
        if f["name"] == name:
            f["bytes"] = size
    (root / MANIFEST_NAME).write_text(json.dumps(doc))


def test_missing_column(tmp_path):
    m = _write(str(tmp_path / "set"))
    name = m.files["train"][0].name
    table = pq.read_table(tmp_path / "set" / name).drop_columns(["label"])
    _patch_bytes(tmp_path / "set", name, _rewrite_shard(tmp_path / "set" / name, table))
    with pytest.raises(DataError) as err:
        verify(open_manifest(str(tmp_path / "set")))
    assert "missing column 'label'" in _one_line(err)


def test_label_out_of_range(tmp_path):
    m = _write(str(tmp_path / "set"))
    name = m.files["train"][0].name
    table = pq.read_table(tmp_path / "set" / name)
    labels = table.column("label").to_numpy().copy()
    labels[3] = 7
    table = table.set_column(1, "label", pa.array(labels, pa.int32()))
    _patch_bytes(tmp_path / "set", name, _rewrite_shard(tmp_path / "set" / name, table))
    with pytest.raises(DataError) as err:
        verify(open_manifest(str(tmp_path / "set")))
    assert "row 3 has label 7, expected 0..2" in _one_line(err)


def test_not_a_parquet_file(tmp_path):
    m = _write(str(tmp_path / "set"))
    name = m.files["val"][0].name
    (tmp_path / "set" / name).write_bytes(b"x" * m.files["val"][0].bytes)
    with pytest.raises(DataError) as err:
        verify(open_manifest(str(tmp_path / "set")))
    assert "not a readable Parquet file" in _one_line(err)


def test_writer_refuses_a_label_outside_the_classes(tmp_path):
    with pytest.raises(DataError, match="label=3"), DatasetWriter(str(tmp_path / "s"), "abc") as w:
        w.write("train", b"x", 3, "k")


def test_unknown_split_names_what_exists(tiny_set):
    with pytest.raises(DataError, match=r"split='test'.*train, val"):
        open_manifest(tiny_set).shard_files("test")


def test_generated_set_verifies(tiny_set):
    m = open_manifest(tiny_set)
    verify(m)
    assert np.array(m.class_counts["train"]).tolist() == [8, 8, 8]


def test_writing_over_an_existing_set_is_refused(tmp_path):
    _write(str(tmp_path / "set"))
    with pytest.raises(DataError, match="already holds a data set"):
        DatasetWriter(str(tmp_path / "set"), ["a"])
