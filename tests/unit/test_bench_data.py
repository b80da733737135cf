"""The built-in set's measurements (`bench/bench_data.py`): the two-branch ablation is the model
it claims to be, and the learning-curve table comes out of the command a user types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from distinception.config import ModelConfig
from distinception.model import googlenet

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from bench_data import (  # noqa: E402
    LEFT_CHANCE,
    TWO_SCALE_COARSE,
    TWO_SCALE_FINE,
    TwoBranchInception,
    curve_rows,
    render_two_scale,
)


def test_two_branch_model_drops_the_5x5_and_pool_branches_at_the_same_width():
    cfg = ModelConfig(variant="bn", width=0.25, input_size=64)
    full = googlenet.build_googlenet(cfg, 10)
    with mock.patch.object(googlenet, "Inception", TwoBranchInception):
        cut = googlenet.build_googlenet(cfg, 10)
    names = [n for n, _ in cut.named_parameters()]
    assert not [n for n in names if "5x5" in n or "pool_proj" in n]
    assert any("5x5" in n for n, _ in full.named_parameters())
    # Every module hands the next the same number of channels as the full one.
    blocks = {n: m for n, m in cut.named_modules() if isinstance(m, TwoBranchInception)}
    assert len(blocks) == len(googlenet.INCEPTION_TABLE)
    x = torch.randn(2, 3, 64, 64)
    full.eval(), cut.eval()
    for name, block in blocks.items():
        spec = getattr(full, name).spec
        assert block.conv1x1.conv.out_channels + block.conv3x3.conv.out_channels == (
            spec.out_channels
        )
    assert cut(x).shape == full(x).shape == (2, 10)


def test_curve_rows_report_when_each_seed_left_chance_and_the_spread():
    runs = [[(100, 0.9), (200, 0.5)], [(100, 0.7), (200, 0.3)], [(100, 0.95), (200, 0.85)]]
    rows = curve_rows("GoogLeNet", runs, 200)
    assert rows[0].startswith("| GoogLeNet | 0 | 200 (100%) |")
    assert rows[1].startswith("| GoogLeNet | 1 | 100 (50%) |")
    assert "| never |" in rows[2] and LEFT_CHANCE < 0.85
    assert rows[-1].endswith("| **55.0 ± 27.8** |")


def test_learning_curves_as_a_user_types_it(tmp_path):
    cmd = (
        "bench/bench_data.py --quick --set two-scale --learn 1 --ablate 1 --budget 128"
        " --points 2 --size 48"
    )
    out = tmp_path / "two-scale.md"
    proc = subprocess.run(
        [sys.executable, *cmd.split(), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "Learning curves, two-scale set:" in text
    assert "| GoogLeNet | 0 |" in text and "| two-branch | 0 |" in text
    assert text.count("mean ± sd") == 2 and "128 examples" in text
    assert "w0.25 @48," in text


def test_learning_curves_train_and_score_at_the_size_asked_for(tmp_path):
    """`--size` measures the set at another side: the loop's model input and the set's images
    are both that size, not the demo's 64 px."""
    import bench_data

    from distinception.data.generated import generate_dataset

    path = str(tmp_path / "s48")
    generate_dataset(path, classes=3, per_class=2, val_per_class=1, size=48)
    seen = []

    def fake_curve(cfg, *args, **kwargs):
        seen.append((cfg.model.input_size, cfg.data.image_size, cfg.data.path))
        return [(1.0, 32, 0.5)]

    with mock.patch("distinception.bench.convergence.local_curve", fake_curve):
        runs = bench_data.learning_curves(path, 2, 32, 1, size=48)
    assert runs == [[(32, 0.5)], [(32, 0.5)]]
    assert seen == [(48, 48, path)] * 2


def test_the_two_scale_class_is_a_pair_that_neither_texture_names_alone():
    pairs = [(TWO_SCALE_COARSE[c % 5], TWO_SCALE_FINE[c % 2]) for c in range(10)]
    assert len(set(pairs)) == 10
    for coarse in TWO_SCALE_COARSE:
        assert sum(p[0] == coarse for p in pairs) == 2
    for fine in TWO_SCALE_FINE:
        assert sum(p[1] == fine for p in pairs) == 5
    # The same draw for three classes: 0 and 5 differ in the fine texture only, 0 and 6 in the
    # coarse one only. Each change shows on the target, and only there: the scene around it is
    # the same.
    imgs = [render_two_scale(c, 64, np.random.default_rng(3)).astype(int) for c in (0, 5, 6)]
    again = render_two_scale(0, 64, np.random.default_rng(3)).astype(int)
    assert (again == imgs[0]).all()
    for other in imgs[1:]:
        changed = (np.abs(other - imgs[0]).max(axis=0) > 30).mean()
        assert 0.01 < changed < 0.6


def test_a_size_below_the_models_smallest_input_is_refused():
    proc = subprocess.run(
        [sys.executable, "bench/bench_data.py", "--size", "16"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert "--size 16: expected an integer >= 32" in proc.stderr


def test_the_s3_rows_stream_the_same_set_from_a_bucket(tmp_path):
    """`--s3` times the bucket copy of each set against its local files: the copy is whole, and a
    stream from it yields the very batches the local one does."""
    from bench_data import s3_copies

    from distinception.data.generated import generate_dataset
    from distinception.data.loader import TrainStream
    from distinception.recipes import get_recipe

    local = str(tmp_path / "set")
    generate_dataset(local, classes=3, per_class=8, val_per_class=1, size=32)
    stop, uris = s3_copies({"set": local})
    try:

        def first_batches(path: str) -> list[torch.Tensor]:
            stream = iter(TrainStream.for_job(get_recipe("tiny"), path))  # batches of 16
            return [t for _ in range(3) for t in next(stream)]  # past an epoch (24 images)

        assert uris["set"].startswith("s3://")
        for a, b in zip(first_batches(local), first_batches(uris["set"]), strict=True):
            assert torch.equal(a, b)
    finally:
        stop()
