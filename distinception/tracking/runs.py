"""Runs made of runs (a sweep's or an ensemble's parent and its children), and reading runs back:
their config, artifacts and models."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from distinception.config import JobConfig
from distinception.tracking.job import (
    run_tags,
    source_tags,
)
from distinception.tracking.store import (
    redact,
    setup,
    tracking_uri,
)

# -- parent runs (sweeps, ensembles) and what hangs off them ----------------------------------

KIND_TAG = "distinception.kind"
TRIAL_TAG = "distinception.trial_id"
ENSEMBLE_FILE = "ensemble.json"


def start_parent_run(cfg: JobConfig, kind: str, name: str, params: dict[str, Any]) -> str:
    """Open the run that a sweep's trials or an ensemble's members nest under."""
    experiment_id = setup(cfg)
    client = MlflowClient(tracking_uri(cfg))
    tags = run_tags() | source_tags() | {KIND_TAG: kind}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    items = sorted((k, redact(str(v))[:6000]) for k, v in params.items())
    for i in range(0, len(items), 100):
        batch = [mlflow.entities.Param(k, v) for k, v in items[i : i + 100]]
        client.log_batch(run.info.run_id, params=batch)
    return run.info.run_id


@contextlib.contextmanager
def parent_run(cfg: JobConfig, kind: str, name: str, params: dict[str, Any]) -> Iterator[str]:
    """A sweep's or ensemble's parent run: FINISHED when the block ends, FAILED (or KILLED when
    interrupted) when it raises."""
    run_id = start_parent_run(cfg, kind, name, params)
    uri = tracking_uri(cfg)
    try:
        yield run_id
    except BaseException as err:
        end_run(uri, run_id, err)
        raise
    end_run(uri, run_id)


def end_run(uri: str, run_id: str, error: BaseException | None = None) -> None:
    client = MlflowClient(uri)
    if error is None:
        client.set_terminated(run_id, status="FINISHED")
        return
    client.set_tag(run_id, "distinception.error", f"{type(error).__name__}: {error}"[:500])
    killed = isinstance(error, (KeyboardInterrupt, SystemExit))
    client.set_terminated(run_id, status="KILLED" if killed else "FAILED")


def close_child_runs(uri: str, parent_run_id: str, status: str, trial_id: str = "") -> int:
    """End children of `parent_run_id` still RUNNING (one trial's, or all) with `status`.

    A trial stopped early by its scheduler, or whose process died, never reaches its own
    `set_terminated`; the driver closes its run here so nothing is left RUNNING.
    """
    client = MlflowClient(uri)
    query = f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.status = 'RUNNING'"
    if trial_id:
        query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'"
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], query, max_results=1000)
    for run in runs:
        client.set_terminated(run.info.run_id, status=status)
    return len(runs)


def record_child_run(
    uri: str, parent_run_id: str, name: str, params: dict[str, Any], metrics: dict[str, float]
) -> str:
    """A finished child run of `parent_run_id` holding only `params` and `metrics` (a
    benchmark's sweep trial, which trains no model of its own)."""
    client = MlflowClient(uri)
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    run = client.create_run(
        experiment_id, run_name=name, tags=run_tags() | {"mlflow.parentRunId": parent_run_id}
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()],
        metrics=[
            mlflow.entities.Metric(k, float(v), int(time.time() * 1000), 0)
            for k, v in metrics.items()
        ],
    )
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def child_runs(uri: str, parent_run_id: str) -> list[Any]:
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        max_results=1000,
    )


def log_json(uri: str, run_id: str, data: Any, path: str) -> None:
    MlflowClient(uri).log_dict(run_id, data, path)


def log_text(uri: str, run_id: str, text: str, path: str) -> None:
    MlflowClient(uri).log_text(run_id, text, path)


def log_table(uri: str, run_id: str, rows: list[dict[str, Any]], path: str) -> None:
    """Rows as an MLflow table artifact (shown as a table in the run's artifact view)."""
    columns = list(rows[0]) if rows else []
    data = {c: [r.get(c) for r in rows] for c in columns}
    MlflowClient(uri).log_table(run_id, data=data, artifact_file=path)


def log_figure(uri: str, run_id: str, figure: Any, path: str) -> None:
    MlflowClient(uri).log_figure(run_id, figure, path)


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    ts = int(time.time() * 1000)
    batch = [mlflow.entities.Metric(k, float(v), ts, step) for k, v in metrics.items()]
    if batch:
        MlflowClient(uri).log_batch(run_id, metrics=batch)


# -- finding what to evaluate ------------------------------------------------------------------


def run_config(uri: str, run_id: str) -> JobConfig:
    """The config a training run logged (its `config.yaml` artifact)."""
    import yaml

    from distinception.config import from_dict

    text = Path(MlflowClient(uri).download_artifacts(run_id, "config.yaml")).read_text()
    return from_dict(yaml.safe_load(text))


def read_json_artifact(uri: str, run_id: str, path: str) -> Any:
    import json

    return json.loads(Path(MlflowClient(uri).download_artifacts(run_id, path)).read_text())


def run_kind(uri: str, run_id: str) -> str:
    return MlflowClient(uri).get_run(run_id).data.tags.get(KIND_TAG, "train")


def model_run_id(uri: str, model_uri: str) -> str:
    """The run that produced a logged model (`runs:/ID/model`, `models:/NAME/V`, `m-...`)."""
    mlflow.set_tracking_uri(uri)
    if model_uri.startswith("runs:/"):
        return model_uri.removeprefix("runs:/").split("/", 1)[0]
    info = mlflow.models.get_model_info(model_uri)
    if not info.run_id:
        raise FileNotFoundError(f"model {model_uri!r}: expected a model logged by a training run")
    return info.run_id


def run_exists(uri: str, run_id: str) -> bool:
    try:
        MlflowClient(uri).get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
