"""Data in S3-compatible object storage, against a real S3 server (moto's) on 127.0.0.1: images in
a bucket imported by a job, inspected, trained from by a job and scored, as the READMEs show;
credentials that never reach MLflow, the output, the config or the manifest; a bucket that
disappears mid-run."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from as_typed import distinception
from image_trees import write_mixed_tree
from mlflow.tracking import MlflowClient
from quadrants import quadrant_job, write_quadrant_set, write_quadrant_tree
from ray_heads import free_port, submit_followed

from distinception.data import importer
from distinception.data.importer import check_image, import_tree
from distinception.data.shards import DataError
from distinception.evaluation import evaluate_target
from distinception.ps.callbacks import Callback
from distinception.training import train

pytestmark = pytest.mark.integration

KEY = "AKIADISTINCEPTION"
SECRET = "s3cr3t-never-logged-0123456789"


@dataclass
class Bucket:
    name: str
    endpoint: str
    client: object

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables, as a user exports them."""
        return {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def uri(self, key: str) -> str:
        """The same place with the credentials and endpoint in the URI (`pyarrow.fs` options)."""
        host = self.endpoint.removeprefix("http://")
        return f"s3://{KEY}:{SECRET}@{self.name}/{key}?scheme=http&endpoint_override={host}"

    def drop(self) -> None:
        for item in self.client.list_objects_v2(Bucket=self.name).get("Contents", []):
            self.client.delete_object(Bucket=self.name, Key=item["Key"])
        self.client.delete_bucket(Bucket=self.name)


@pytest.fixture(scope="module")
def s3_server():
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
    )
    try:
        yield endpoint, client
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_server, request) -> Bucket:
    endpoint, client = s3_server
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-")
    client.create_bucket(Bucket=name)
    return Bucket(name, endpoint, client)


def test_images_in_a_bucket_to_a_run_in_mlflow_by_jobs_as_the_readme_shows(
    jobs_head, bucket, mlflow_uri, tmp_path
):
    """bucket -> import job -> train job -> MLflow, on a real head with the Jobs API: the
    path `cluster/README.md` walks. The head has no AWS variables, so the jobs get the
    credentials and endpoint in their URIs (`pyarrow.fs` options)."""
    tree = write_quadrant_tree(tmp_path / "tree", per_class=160)
    for path in sorted(tree.rglob("*.jpg")):  # as `aws s3 sync tree s3://bucket/raw` does
        bucket.client.upload_file(str(path), bucket.name, f"raw/{path.relative_to(tree)}")

    # The import job: Ray Data tasks read the tree from the bucket and write shards back.
    imported = submit_followed(
        jobs_head,
        "import.yaml",
        *(bucket.uri("raw"), "--out", bucket.uri("quadrants"), "--val-fraction", "0.25"),
        mlflow_uri=mlflow_uri,
    ).stdout
    assert "(ray engine)" in imported and "skipped: 0" in imported, imported[-2000:]
    listed = {o["Key"] for o in bucket.client.list_objects_v2(Bucket=bucket.name)["Contents"]}
    assert "quadrants/manifest.json" in listed and "quadrants/train-00000.parquet" in listed
    # Inspected from here with the credentials in the standard AWS variables instead.
    aws = dict(os.environ, **bucket.env, RAY_USAGE_STATS_ENABLED="0")
    data = f"s3://{bucket.name}/quadrants"
    inspected = distinception("data", "inspect", data, env=aws).stdout
    assert "4 classes" in inspected and "train: 480 images" in inspected, inspected

    # The train job streams it from the bucket in every replica and the averager: each replica
    # reads its own row groups (the importer's are 256 rows: two here) and the next window ahead.
    trained = submit_followed(
        jobs_head,
        "train.yaml",
        *("--recipe", "tiny", "--set", f"data.path={bucket.uri('quadrants')}"),
        *("--set", "data.shuffle=blocks", "--set", "augment.flip=false"),
        mlflow_uri=mlflow_uri,
    ).stdout
    run_id = trained.split("MLflow run ")[1].split()[0]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    # 4 classes, chance 0.75; the tiny job on this set ends near 0 (test_train.py). Half the
    # accuracy (0.5) fails.
    assert run.data.metrics["val/final_polyak_top1_error"] <= 0.1, trained[-2000:]
    assert run.data.params["data.path"].startswith(f"s3://{KEY}:***@{bucket.name}/quadrants?")

    # Scored from the bucket on 1 and 10 crops (a run keeps its path without the secret, so the
    # data is named again, as `evaluate --data` does).
    scored = evaluate_target(
        run_id, ["center", "ten"], uri=mlflow_uri, data_path=bucket.uri("quadrants"), log=False
    )
    assert scored["images"] == 160 and [r["crops"] for r in scored["rows"]] == [1, 10]
    assert scored["rows"][0]["top1_error"] <= 0.1

    # The secret is nowhere the jobs wrote: their output, the store, the run's artifacts (its
    # config.yaml among them), the data set's manifest.
    assert SECRET not in imported + trained
    artifacts = mlflow.artifacts.download_artifacts(
        run_id=run_id, dst_path=str(tmp_path / "artifacts"), tracking_uri=mlflow_uri
    )
    written = [p for p in Path(artifacts).rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in written), written
    written += [Path(mlflow_uri.removeprefix("sqlite:///"))]
    leaked = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked
    manifest = bucket.client.get_object(Bucket=bucket.name, Key="quadrants/manifest.json")
    source = json.loads(manifest["Body"].read())["source"]["imported_from"]
    assert source.startswith(f"s3://{KEY}:***@{bucket.name}/raw?"), source


class DropBucket(Callback):
    """Deletes the bucket once training metrics arrive."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket, self.dropped = bucket, False

    def on_metrics(self, metrics, step):
        if not self.dropped and "loss" in metrics:
            self.bucket.drop()
            self.dropped = True


def test_a_bucket_that_disappears_mid_run_fails_the_job_in_one_line(
    bucket, mlflow_uri, monkeypatch
):
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)  # the local Ray started below passes them to its actors
    data = write_quadrant_set(f"s3://{bucket.name}/q", per_class=96, val_per_class=16)
    cfg = quadrant_job(data, mlflow_uri, run={"max_examples": 200_000})
    dropper = DropBucket(bucket)
    with pytest.raises(DataError) as err:
        train(cfg, callbacks=[dropper])
    assert dropper.dropped
    message = str(err.value)
    assert "\n" not in message and f"{bucket.name}/q/" in message, message
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("distinception").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["distinception.error"].startswith("DataError: ")


def test_a_bucket_that_disappears_mid_import_stops_it_in_one_line(bucket, tmp_path, monkeypatch):
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)
    tree = write_mixed_tree(tmp_path / "tree")
    dropped = []

    def check_then_drop(data):
        if not dropped:
            bucket.drop()
            dropped.append(True)
        return check_image(data)

    monkeypatch.setattr(importer, "check_image", check_then_drop)
    with pytest.raises(DataError) as err:
        import_tree(str(tree), f"s3://{bucket.name}/set", workers=1, progress=False)
    message = str(err.value)
    assert dropped and "\n" not in message, message
    assert f"s3://{bucket.name}/set" in message and "could not be written" in message, message


def test_an_ensemble_trains_its_members_from_a_bucket_and_is_scored_there(
    bucket, mlflow_uri, tmp_path, monkeypatch
):
    """Tune trials (the members here; a sweep's trials run the same trainable) stream their
    shards from the bucket, and the ensemble's Table 3 grid is scored from it."""
    for key, value in bucket.env.items():
        monkeypatch.setenv(key, value)  # the command below and the scoring here read them
    data = write_quadrant_set(f"s3://{bucket.name}/q", per_class=96, val_per_class=16)
    out = tmp_path / "ens"
    distinception(
        *("ensemble", "--recipe", "tiny", "--set", f"data.path={data}"),
        *("--set", "ps.num_shards=1", "--set", "ps.num_replicas=1"),
        *("--set", f"tracking.tracking_uri={mlflow_uri}", "--set", "run.max_examples=1500"),
        *("--set", "data.shuffle=blocks", "--set", "augment.flip=false"),
        *("--members", "2", "--augments", "none", "--max-concurrent", "1", "--out", str(out)),
        cwd=tmp_path,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )
    result = json.loads((out / "ensemble.json").read_text())
    assert [m["status"] for m in result["members"]] == ["finished", "finished"]
    client = MlflowClient(mlflow_uri)
    for m in result["members"]:
        assert client.get_run(m["run_id"]).data.params["data.path"] == data
    # Scored from the data path the members ran on, read from the bucket.
    report = evaluate_target(result["parent_run_id"], ["center"], uri=mlflow_uri, log=False)
    grid = {(r["models"], r["crops"]): r for r in report["rows"]}
    assert report["images"] == 64 and set(grid) == {(1, 1), (2, 1)}
    # Chance is 0.75; members of the tiny job on this set end near 0 (test_ensemble.py). Half
    # the accuracy fails.
    assert grid[2, 1]["top1_error"] <= 0.1, report
