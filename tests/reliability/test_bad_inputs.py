"""Bad inputs as a user meets them: `distinception train` ends with one line naming the problem
(exit status 2), or the bad item is skipped and counted; never a traceback, never a wrong result.

Damaged images inside shards, bad manifests and bad config values are unit-tested in the data
and config rooms; here each reaches the command, through the real loader, shards and actors.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from as_typed import distinception

from distinception.cli import main
from distinception.config import AugmentConfig, OptimConfig, PSConfig
from distinception.data.loader import TrainStream
from distinception.ps.layout import ParamLayout
from distinception.ps.replica import build_flat_model
from distinception.ps.shard import ShardCore
from distinception.recipes import get_recipe


def _cli(capsys, *args: str) -> str:
    """Run the command in-process; return its one-line error (and insist there is one)."""
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    # MLflow may log its own INFO lines first (creating the store); ours is the last line.
    err = err.splitlines()[-1]
    assert err.startswith("distinception: error: ") and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _copy_set(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(root: Path, name: str, table: pa.Table) -> None:
    """Replace one shard and keep the manifest's byte and row counts in step with it, so the
    only thing wrong is what the test put there."""
    pq.write_table(table, root / name)
    doc = json.loads((root / "manifest.json").read_text())
    for files in doc["files"].values():
        for f in files:
            if f["name"] == name:
                f["bytes"] = (root / name).stat().st_size
    (root / "manifest.json").write_text(json.dumps(doc))


def _train_args(data: Path, uri: str) -> list[str]:
    return [
        "train",
        "--recipe",
        "tiny",
        "--set",
        f"data.path={data}",
        "--set",
        f"tracking.tracking_uri={uri}",
        "--set",
        "run.max_examples=2000",
    ]


# -- data ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label_type", "values"),
    [(pa.string(), lambda n: [str(i % 4) for i in range(n)]), (pa.float32(), None)],
)
def test_wrong_label_type_is_one_line(
    ray_local, tiny_data, mlflow_uri, tmp_path, capsys, label_type, values
):
    root = _copy_set(tiny_data, tmp_path / "set")
    table = pq.read_table(root / "train-00000.parquet")
    labels = table.column("label")
    new = pa.array(values(len(labels))) if values else labels.cast(label_type)
    _rewrite(root, "train-00000.parquet", table.set_column(1, "label", new))
    err = _cli(capsys, *_train_args(root, mlflow_uri))
    assert f"column 'label' is {label_type}, expected int32" in err


def test_label_outside_the_classes_found_by_a_replica_is_one_line(
    ray_local, tiny_data, mlflow_uri, tmp_path, capsys
):
    root = _copy_set(tiny_data, tmp_path / "set")
    table = pq.read_table(root / "train-00000.parquet")
    labels = table.column("label").to_numpy().copy()
    labels[5] = 9  # 4 classes: 0..3
    _rewrite(
        root, "train-00000.parquet", table.set_column(1, "label", pa.array(labels, pa.int32()))
    )
    err = _cli(capsys, *_train_args(root, mlflow_uri))
    assert "has label 9, expected 0..3" in err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("rows", "rows, the manifest says"),
        ("bytes", "bytes, the manifest says"),
        ("missing", "missing file (the manifest lists it)"),
        ("no-val", "split='val': not in"),
        ("empty-train", "0 training images, too few for ps.num_replicas=2"),
        ("empty-val", "the val split is empty"),
    ],
)
def test_manifest_that_disagrees_with_its_shards_is_refused_before_training(
    ray_local, tiny_data, mlflow_uri, tmp_path, capsys, damage, message
):
    root = _copy_set(tiny_data, tmp_path / "set")
    path = root / "manifest.json"
    doc = json.loads(path.read_text())
    train = doc["files"]["train"][0]
    if damage == "rows":
        train["rows"] += 1
        doc["counts"]["train"] += 1
        doc["class_counts"]["train"][0] += 1
    elif damage == "bytes":
        train["bytes"] += 7
    elif damage == "missing":
        (root / train["name"]).unlink()
    elif damage == "no-val":
        for key in ("files", "counts", "class_counts"):
            del doc[key]["val"]
    elif damage.startswith("empty-"):
        split = damage.removeprefix("empty-")
        name = doc["files"][split][0]["name"]
        empty = pq.read_table(root / name).slice(0, 0)
        pq.write_table(empty, root / name)
        doc["files"][split] = [{"name": name, "rows": 0, "bytes": (root / name).stat().st_size}]
        doc["counts"][split] = 0
        doc["class_counts"][split] = [0] * len(doc["classes"])
    path.write_text(json.dumps(doc))
    assert message in _cli(capsys, *_train_args(root, mlflow_uri))


def test_an_empty_shard_among_full_ones_is_read_past(tiny_data, tmp_path):
    root = _copy_set(tiny_data, tmp_path / "set")
    doc = json.loads((root / "manifest.json").read_text())
    empty = pq.read_table(root / "train-00000.parquet").slice(0, 0)
    pq.write_table(empty, root / "train-empty.parquet")
    doc["files"]["train"].insert(
        0,
        {
            "name": "train-empty.parquet",
            "rows": 0,
            "bytes": (root / "train-empty.parquet").stat().st_size,
        },
    )
    (root / "manifest.json").write_text(json.dumps(doc))
    stream = TrainStream(
        str(root),
        consumer=0,
        num_consumers=1,
        batch_size=16,
        augment=AugmentConfig(),
        input_size=32,
        seed=0,
    )
    it = iter(stream)
    labels = torch.cat([next(it)[1] for _ in range(16)])  # a whole epoch of 256 rows
    assert stream.skipped == 0
    assert torch.bincount(labels, minlength=4).tolist() == doc["class_counts"]["train"]


# -- configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"ps: [unclosed\n", "not valid YAML line"),
        (b"\xff\xfe binary", "not UTF-8 text"),
        (b"ps:\n  num_replica: 4\n", "ps.num_replica: unknown key (did you mean 'num_replicas'?)"),
        (b"model:\n  width: 9\n", "model.width=9.0: expected a number in (0, 4]"),
        (b"ps:\n  lr: 1e999\n", "optim.lr=inf: expected a finite number"),
        (b"ps:\n  num_shards: 1e400\n", "ps.num_shards="),
        (b"ps: 3\n", "ps=3: expected a mapping"),
        (b"- a\n- b\n", "expected a mapping of sections"),
        (b"run:\n  max_examples: -5\n", "run.max_examples=-5: expected an integer >= 0"),
        (b"data:\n  batch_size: 2.5\n", "data.batch_size=2.5: expected an integer"),
    ],
)
def test_bad_config_files_are_one_line(capsys, tmp_path, text, message):
    path = tmp_path / "job.yaml"
    path.write_bytes(text)
    err = _cli(capsys, "train", "--recipe", "tiny", "--config", str(path), "--print-config")
    assert message in err


# -- gradients -------------------------------------------------------------------------------


def _shard(layout: ParamLayout, **optim) -> ShardCore:
    opt = OptimConfig(**({"momentum": 0.0, "weight_decay": 0.0, "lr": 1.0} | optim))
    return ShardCore(0, 0, layout.total, layout, torch.zeros(layout.total), PSConfig(), opt, 100)


def test_huge_gradients_are_refused_or_clipped_by_the_configured_norm():
    layout = ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(4, 3)))
    huge = torch.full((15,), 1e20)  # finite, but its norm overflows float32
    plain = _shard(layout)
    r = plain.apply(huge, 0, examples=1, fingerprint=layout.fingerprint)
    assert not r.accepted and r.reason == "nonfinite"
    assert plain.version == 0 and bool((plain.flat == 0).all())

    clipped = _shard(layout, clip_norm=1.0)
    big = torch.arange(15.0)
    r = clipped.apply(big, 0, examples=1, fingerprint=layout.fingerprint)
    assert r.accepted and clipped.stats()["clipped"] == 1
    torch.testing.assert_close(clipped.flat, -big / big.norm())  # lr 1: one step of norm 1
    small = torch.full((15,), 0.01)
    clipped.apply(small, 1, examples=1, fingerprint=layout.fingerprint)
    assert clipped.stats()["clipped"] == 1  # under the norm: applied as it is


def test_a_push_from_a_replica_with_another_layout_is_refused():
    cfg = get_recipe("tiny")
    _, flat, _, layout = build_flat_model(cfg.model, 4, seed=0)
    shard = _shard(layout)
    shard.flat.copy_(flat)
    for other in (
        cfg.replace(model=cfg.model.__class__(**(cfg.model.__dict__ | {"width": 0.25}))),
        cfg.replace(model=cfg.model.__class__(**(cfg.model.__dict__ | {"aux": False}))),
    ):
        _, _, grad, theirs = build_flat_model(other.model, 4, seed=0)
        assert theirs.fingerprint != layout.fingerprint
        r = shard.apply(grad, 0, examples=1, fingerprint=theirs.fingerprint)
        assert not r.accepted and r.reason == "layout"
    # Same number of values, different shapes: the fingerprint still tells them apart.
    a = ParamLayout.from_module(torch.nn.Linear(4, 3))
    b = ParamLayout.from_module(torch.nn.Linear(2, 5))
    assert a.total == b.total and a.fingerprint != b.fingerprint
    r = _shard(a).apply(torch.ones(15), 0, examples=1, fingerprint=b.fingerprint)
    assert r.reason == "layout"
    assert torch.equal(shard.flat, flat) and shard.version == 0


# -- checkpoints -----------------------------------------------------------------------------


def _checkpoint_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    cfg = get_recipe("tiny")
    (directory / "progress.json").write_text(json.dumps({"config": cfg.to_dict(), "examples": 0}))
    return directory


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a weights-only torch checkpoint"),
        (b"PK\x03\x04 truncated zip", "not a weights-only torch checkpoint"),
        (b"\x80\x04not really a pickle", "not a weights-only torch checkpoint"),
    ],
)
def test_damaged_checkpoint_at_resume_is_one_line(capsys, tmp_path, content, message):
    directory = _checkpoint_dir(tmp_path)
    (directory / "shard-1.pt").write_bytes(content)
    err = _cli(capsys, "train", "--resume", str(directory))
    assert "shard-1.pt" in err and message in err


def test_truncated_real_checkpoint_and_bad_progress_are_one_line(capsys, tmp_path):
    directory = _checkpoint_dir(tmp_path)
    from distinception.ps import checkpoint as ckpt

    ckpt.save_state(str(directory / "averager.pt"), {"w": torch.ones(1000), "version": 3})
    whole = (directory / "averager.pt").read_bytes()
    (directory / "averager.pt").write_bytes(whole[: len(whole) // 2])
    assert "averager.pt" in _cli(capsys, "train", "--resume", str(directory))
    (directory / "progress.json").write_text("{not json")
    assert "progress.json: not valid JSON" in _cli(capsys, "train", "--resume", str(directory))


def test_a_job_larger_than_the_local_ray_fails_in_one_line_before_anything_starts(tmp_path):
    """Typed as a user would (the installed entry point): the paper recipe with more replicas
    than any machine here has cores. A local Ray cannot grow, so instead of waiting forever for
    room the command names the fields to lower, before generating any data."""
    env = dict(os.environ, HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    proc = distinception(
        *("train", "--recipe", "paper", "--set", "ps.num_replicas=64"),
        *("--set", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"),
        code=2,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    # One line and nothing else: no usage block, no Ray start-up notices, no traceback.
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    (last,) = lines
    assert last.startswith("distinception: error: the job's actors ask for 65.25 CPU"), last
    assert (
        "ps.num_replicas=64 x placement.replica_cpus=1" in last and "lower ps.num_replicas" in last
    )
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob(".cache/distinception/generated-*"))  # no data generated
