import os

import numpy as np
import pytest
import torch

from distinception.config import DataConfig
from distinception.data import generated
from distinception.data.generated import (
    MAX_CLASSES,
    class_names,
    ensure_generated,
    generate_dataset,
    render,
    shards_path,
)
from distinception.data.loader import decode
from distinception.data.shards import DataError, iter_batches, open_manifest


def _all_bytes(path):
    m = open_manifest(path)
    return [
        (r["image"], r["label"], r["key"])
        for split in m.splits
        for b in iter_batches(m, split, columns=("image", "label", "key"))
        for r in b.to_pylist()
    ]


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_set, tmp_path):
    again = str(tmp_path / "again")
    generate_dataset(again, classes=3, per_class=8, val_per_class=4, size=32, seed=7, shard_rows=10)
    assert _all_bytes(again) == _all_bytes(tiny_set)
    other = str(tmp_path / "other")
    generate_dataset(other, classes=3, per_class=8, val_per_class=4, size=32, seed=8, shard_rows=10)
    assert [r[0] for r in _all_bytes(other)] != [r[0] for r in _all_bytes(tiny_set)]


def test_images_are_jpegs_of_the_requested_size_with_balanced_labels(tiny_set):
    rows = _all_bytes(tiny_set)
    img = decode(rows[0][0])
    assert rows[0][0][:3] == b"\xff\xd8\xff" and img.shape == (3, 32, 32)
    m = open_manifest(tiny_set)
    assert m.image_size == 32 and m.source["seed"] == 7
    assert m.classes == ("disc-solid", "square-stripes", "triangle-checker")
    assert [r[1] for r in rows[:6]] == [0, 1, 2, 0, 1, 2]


def test_classes_pair_every_shape_with_every_texture_once():
    names = class_names(MAX_CLASSES)
    assert len(set(names)) == MAX_CLASSES == 42
    # The first ten already need both factors: no shape and no texture alone names a class.
    shapes = [n.split("-")[0] for n in names[:10]]
    textures = [n.split("-")[1] for n in names[:10]]
    assert len(set(shapes)) < 10 and len(set(textures)) < 10


def test_class_count_outside_the_generator_fails_clearly(tmp_path):
    with pytest.raises(DataError, match=r"classes=43: the generated data set has 2\.\.42 classes"):
        generate_dataset(str(tmp_path / "x"), classes=43, per_class=1, val_per_class=1)


def test_ensure_generated_caches_atomically(tmp_path, monkeypatch):
    cfg = DataConfig(
        cache_dir=str(tmp_path / "cache"), classes=2, per_class=2, val_per_class=1, image_size=16
    )
    path = ensure_generated(cfg)
    assert os.path.isfile(os.path.join(path, "manifest.json"))
    assert os.listdir(tmp_path / "cache") == [os.path.basename(path)]  # no temp dir left behind
    assert shards_path(cfg) == path
    assert shards_path(DataConfig(path="/somewhere/else")) == "/somewhere/else"

    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached set")

    monkeypatch.setattr(generated, "generate_dataset", fail)
    assert ensure_generated(cfg) == path
    # A different parameter is a different set; a failed generation leaves nothing behind.
    with pytest.raises(AssertionError):
        ensure_generated(
            DataConfig(cache_dir=cfg.cache_dir, classes=3, per_class=2, val_per_class=1)
        )
    assert os.listdir(tmp_path / "cache") == [os.path.basename(path)]


def test_a_linear_classifier_on_raw_pixels_stays_near_chance():
    """The set must need features, not templates: ridge regression on pixels, 10 classes.

    A small version of the benchmark's measurement (bench/bench_data.py --linear), kept to a
    few seconds: 32 px images, 150 per class.
    """
    classes, n_train, n_val, size = 10, 150, 40, 32

    def pixels(split, n):
        xs, ys = [], []
        for i in range(classes * n):
            rng = np.random.default_rng([0, split, i])
            xs.append(render(i % classes, size, rng).reshape(-1).astype(np.float64) / 255)
            ys.append(i % classes)
        return np.stack(xs), np.array(ys)

    xtr, ytr = pixels(0, n_train)
    xva, yva = pixels(1, n_val)
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-3
    xtr, xva = (xtr - mu) / sd, (xva - mu) / sd
    targets = np.eye(classes)[ytr]
    # Ridge in its dual form: n x n instead of d x d.
    alpha = np.linalg.solve(xtr @ xtr.T + 1e3 * np.eye(len(xtr)), targets)
    w = xtr.T @ alpha
    train_acc = float(((xtr @ w).argmax(1) == ytr).mean())
    val_acc = float(((xva @ w).argmax(1) == yva).mean())
    assert train_acc > 0.5  # the classifier does fit what it sees...
    assert val_acc < 0.25  # ...and it does not generalise: chance is 0.10


def test_render_is_pure():
    a = render(3, 24, np.random.default_rng(1))
    b = render(3, 24, np.random.default_rng(1))
    assert a.dtype == np.uint8 and a.shape == (3, 24, 24) and np.array_equal(a, b)
    assert torch.from_numpy(a).float().std() > 10  # not a blank picture
