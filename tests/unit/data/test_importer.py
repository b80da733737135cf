import shutil
from pathlib import Path

import pytest
import torch
from image_trees import image_bytes, save, stored_rows, write_mixed_tree
from PIL import Image

from distinception.data import importer
from distinception.data.importer import (
    CORRUPT,
    EMPTY,
    NOT_IMAGE,
    OUTSIDE,
    TRUNCATED,
    UNKNOWN_CLASS,
    check_image,
    import_tree,
    inspect_dataset,
)
from distinception.data.loader import decode, eval_batches
from distinception.data.shards import DataError, iter_batches, open_manifest, verify


@pytest.fixture
def tree(tmp_path):
    return write_mixed_tree(tmp_path / "src")


def test_import_counts_every_file_and_skips_by_reason(tree, tmp_path):
    out = str(tmp_path / "out")
    report = import_tree(str(tree), out, val_fraction=0.25, seed=1, workers=1, progress=False)
    assert report.classes == ["cat", "dog"] and report.layout == "class folders"
    assert report.read == 9 + 13 + 1
    assert dict(report.skipped) == {EMPTY: 1, NOT_IMAGE: 1, TRUNCATED: 1, CORRUPT: 1, OUTSIDE: 1}
    # cat: 5 good files (jpg, png, gif, bmp, JPEG); dog: 13 (10 jpg, nested png, cmyk, 16-bit).
    assert report.per_class["train"][0] + report.per_class["val"][0] == 5
    assert report.per_class["train"][1] + report.per_class["val"][1] == 13
    assert report.per_class["val"] == [1, 3]  # round(0.25 * files found) per class
    assert report.reencoded == 2  # GIF and BMP; CMYK JPEG and 16-bit PNG are kept as they are
    text = report.format()
    for needle in (
        "files read: 23",
        "truncated: 1",
        "empty file: 1",
        "not an image: 1",
        "cat",
        "dog",
    ):
        assert needle in text
    m = open_manifest(out)
    verify(m)
    assert m.counts == {"train": 14, "val": 4}
    # Every stored image decodes with the training decoder.
    for split in ("train", "val"):
        for batch in iter_batches(m, split, columns=("image", "key")):
            for data in batch.column("image").to_pylist():
                img = decode(data)
                assert img is not None and img.dtype == torch.uint8 and img.shape[0] == 3
    keys = [
        k for b in iter_batches(m, "train", columns=("key",)) for k in b.column("key").to_pylist()
    ]
    # Stored in a random order, not class by class, so a prefix of a split holds every class.
    labels = [
        v
        for b in iter_batches(m, "train", columns=("label",))
        for v in b.column("label").to_pylist()
    ]
    assert labels != sorted(labels) and set(labels[:7]) == {0, 1}
    assert "dog/nested/deep.png" in keys + [
        k for b in iter_batches(m, "val", columns=("key",)) for k in b.column("key").to_pylist()
    ]


def test_val_draw_is_deterministic_and_seeded(tree, tmp_path):
    def val_keys(seed, name):
        import_tree(
            str(tree), str(tmp_path / name), val_fraction=0.3, seed=seed, workers=1, progress=False
        )
        m = open_manifest(str(tmp_path / name))
        return sorted(
            k for b in iter_batches(m, "val", columns=("key",)) for k in b.column("key").to_pylist()
        )

    first = val_keys(0, "a")
    assert first == val_keys(0, "b")
    assert first != val_keys(5, "c")


def test_train_val_layout_and_worker_pool(tmp_path):
    src = tmp_path / "imagenet"
    for split, n in (("train", 6), ("val", 2)):
        for c in ("n01", "n02"):
            for i in range(n):
                save(src / split / c / f"{i}.JPEG", hash((split, c, i)) % 1000, "JPEG")
    save(src / "val" / "n99" / "x.JPEG", 9, "JPEG")  # a class train/ does not have
    (src / "val" / "n01" / "zero.JPEG").write_bytes(b"")
    report = import_tree(str(src), str(tmp_path / "out"), workers=2, shard_rows=5, progress=False)
    assert report.layout == "train/val"
    assert report.written == {"train": 12, "val": 4}
    assert report.per_class == {"train": [6, 6], "val": [2, 2]}
    assert dict(report.skipped) == {UNKNOWN_CLASS: 1, EMPTY: 1}
    m = open_manifest(str(tmp_path / "out"))
    assert len(m.files["train"]) == 3
    assert (
        sum(len(y) for _, y in eval_batches(str(tmp_path / "out"), input_size=16, batch_size=3))
        == 4
    )


def test_bad_source_fails_clearly(tmp_path):
    with pytest.raises(DataError, match="expected a directory"):
        import_tree(str(tmp_path / "missing"), str(tmp_path / "o"), progress=False)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(image_bytes(1, "JPEG"))
    with pytest.raises(DataError, match="no class folders"):
        import_tree(str(tmp_path / "flat"), str(tmp_path / "o"), progress=False)


def test_inspect_summarises_and_writes_a_grid(tiny_set, tmp_path):
    grid = tmp_path / "grid" / "sample.png"
    text = inspect_dataset(tiny_set, str(grid), per_class=4)
    assert "3 classes" in text and "train: 24 images" in text and "8 / 4" in text
    img = Image.open(grid)
    assert img.size[0] > 4 * 64 and img.size[1] > 3 * 64


def test_an_interrupted_import_resumes_keeping_whole_shards_and_redoing_the_rest(tree, tmp_path):
    whole = str(tmp_path / "whole")
    opts = {"val_fraction": 0.25, "shard_rows": 3, "workers": 1, "progress": False}
    import_tree(str(tree), whole, seed=1, **opts)
    # What an interrupted run leaves: shards but no manifest, one shard cut short before it was
    # moved into place (only its temporary file), one damaged, and a shard of another plan.
    out = tmp_path / "out"
    shutil.copytree(whole, out)
    (out / "manifest.json").unlink()
    names = sorted(p.name for p in out.glob("train-*.parquet"))
    written = len(list(out.glob("*.parquet")))
    assert len(names) >= 3
    (out / names[1]).rename(out / (names[1] + ".tmp"))
    (out / names[2]).write_bytes((out / names[2]).read_bytes()[:100])
    (out / "train-00042.parquet").write_bytes(b"left by a run with other settings")
    with pytest.raises(DataError, match=r"no manifest\.json"):
        open_manifest(str(out))
    report = import_tree(str(tree), str(out), seed=1, **opts)
    assert report.resumed == written - 2
    assert f"resumed: {written - 2} of {report.shards} shards" in report.format()
    # Only the redone shards' files were read again (and the listing's files outside any class).
    assert 0 < report.read < 23 and report.listed == 23
    assert f"files read: {report.read} of 23 (the others are in the kept shards)" in report.format()
    # The skipped files of kept shards are counted from their footers, as in the first run.
    assert dict(report.skipped) == {EMPTY: 1, NOT_IMAGE: 1, TRUNCATED: 1, CORRUPT: 1, OUTSIDE: 1}
    assert stored_rows(str(out)) == stored_rows(whole)
    assert open_manifest(str(out)).files == open_manifest(whole).files
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in Path(whole).iterdir())
    # Killed after its last shard, before the manifest: every shard is kept, no image is read.
    (out / "manifest.json").unlink()
    report = import_tree(str(tree), str(out), seed=1, **opts)
    assert report.resumed == report.shards and report.read == report.skipped[OUTSIDE] == 1
    assert open_manifest(str(out)).files == open_manifest(whole).files
    # A run with another seed plans other shards: nothing written for the old plan is kept.
    (out / "manifest.json").unlink()
    report = import_tree(str(tree), str(out), seed=2, **opts)
    assert report.resumed == 0
    verify(open_manifest(str(out)))


def test_a_finished_set_is_never_imported_over(tree, tmp_path):
    out = str(tmp_path / "out")
    import_tree(str(tree), out, workers=1, progress=False)
    with pytest.raises(DataError, match="already holds a data set"):
        import_tree(str(tree), out, workers=1, progress=False)


def test_a_tree_that_vanishes_mid_import_stops_it_in_one_line(tree, tmp_path, monkeypatch):
    """Counting the files of a vanished tree as unreadable would finish a set mostly missing."""
    checked = []

    def check_then_vanish(data):
        if not checked:
            shutil.rmtree(tree)
        checked.append(1)
        return check_image(data)

    monkeypatch.setattr(importer, "check_image", check_then_vanish)
    out = tmp_path / "out"
    with pytest.raises(DataError) as err:
        import_tree(str(tree), str(out), workers=1, progress=False)
    message = str(err.value)
    assert "\n" not in message and "no longer exists" in message and str(tree) in message
    assert not (out / "manifest.json").exists()
