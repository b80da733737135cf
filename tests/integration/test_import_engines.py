"""`data import` on both engines: the local process pool and Ray Data tasks write the same set
from the same tree and skip the same broken files; a Ray import typed as a user does and killed
half-way leaves no manifest, and the same import finishes it; a tree that vanishes under the
tasks stops the import in one line. (The import job spec runs on a real head, from a bucket into
a bucket, in test_object_storage.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from as_typed import EXE
from image_trees import stored_rows, write_mixed_tree
from quadrants import write_quadrant_tree
from ray_heads import kill_pids, pids_using

from distinception.data.importer import import_tree, plan_import, run_import
from distinception.data.shards import DataError, open_manifest, verify
from distinception.importing import _run_on_ray, import_tree_on_ray

pytestmark = pytest.mark.integration


def test_both_engines_write_the_same_set_and_skip_the_same_files(ray_local, tmp_path):
    tree = write_mixed_tree(tmp_path / "tree")
    local, on_ray = str(tmp_path / "local"), str(tmp_path / "ray")
    opts = {"val_fraction": 0.25, "shard_rows": 4, "progress": False}
    a = import_tree(str(tree), local, **opts)
    b = import_tree_on_ray(str(tree), on_ray, **opts)
    assert (a.engine, b.engine) == ("local", "ray")
    # Past the first line (paths, seconds, engine) the reports are the same, line by line:
    # files read, written per split, re-encoded, skipped by reason, per class.
    assert a.format().splitlines()[1:] == b.format().splitlines()[1:], b.format()
    assert dict(b.skipped) == {
        "empty file": 1,
        "not an image": 1,
        "truncated": 1,
        "corrupt": 1,
        "outside a class folder": 1,
    }
    assert b.reencoded == 2 and b.shards > 4
    ma, mb = open_manifest(local), open_manifest(on_ray)
    verify(mb)
    assert (ma.classes, ma.counts, ma.class_counts, ma.files) == (
        mb.classes,
        mb.counts,
        mb.class_counts,
        mb.files,
    )
    assert stored_rows(local) == stored_rows(on_ray)


def test_a_ray_import_killed_half_way_leaves_no_manifest_and_a_rerun_finishes_it(
    ray_local, tmp_path
):
    tree = write_quadrant_tree(tmp_path / "tree", per_class=250)
    out = tmp_path / "set"
    args = ("data", "import", str(tree), "--out", str(out), "--engine", "ray", "--shard-rows", "10")
    # Its own Ray temp dir, so every process of the killed import's Ray can be found after.
    ray_tmp = tempfile.mkdtemp(prefix="dimp-", dir="/tmp")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen(
        [EXE, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(list(out.glob("*.parquet"))) < 3:
            assert proc.poll() is None, "the import ended before it could be interrupted"
            assert time.monotonic() < deadline, "no shard written in 180 s"
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        kill_pids(pids_using(ray_tmp), signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    whole = sorted(p.name for p in out.glob("*.parquet"))
    assert not (out / "manifest.json").exists()
    assert 3 <= len(whole) < 100, whole  # 900 train + 100 val files, 10 per shard

    # The same import again (here on the module's Ray) keeps what was whole and does the rest.
    rerun = import_tree_on_ray(str(tree), str(out), shard_rows=10, progress=False)
    assert len(whole) <= rerun.resumed < rerun.shards == 100, rerun.format()
    verify(open_manifest(str(out)))
    # Kept and redone shards together are exactly the set an uninterrupted import writes.
    import_tree(str(tree), str(tmp_path / "local"), shard_rows=10, workers=1, progress=False)
    assert stored_rows(str(out)) == stored_rows(str(tmp_path / "local"))


def test_a_tree_that_vanishes_under_ray_tasks_stops_the_import_in_one_line(ray_local, tmp_path):
    tree = write_mixed_tree(tmp_path / "tree")
    out = tmp_path / "set"
    plan = plan_import(str(tree), str(out), shard_rows=4)
    shutil.rmtree(tree)  # after the listing, before any task reads
    with pytest.raises(DataError) as err:
        run_import(plan, _run_on_ray(plan, cpus_per_task=1.0), "ray", progress=False)
    message = str(err.value)
    assert "\n" not in message and "no longer exists" in message, message
    assert not (out / "manifest.json").exists()
