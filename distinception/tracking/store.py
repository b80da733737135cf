"""Where runs are stored: the tracking URI a job uses, and how a user opens it."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from distinception.config import JobConfig
from distinception.uris import redact

DEFAULT_DIR = "mlruns"
# Artifact downloads here are a few small files; a progress bar per file is only noise.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def default_tracking_uri() -> str:
    return "sqlite:///" + str(Path(DEFAULT_DIR).resolve() / "mlflow.db")


def tracking_uri(cfg: JobConfig) -> str:
    return (
        cfg.tracking.tracking_uri
        or os.environ.get("MLFLOW_TRACKING_URI")
        or (default_tracking_uri())
    )


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    return f"open {redact(uri)} in a browser"


def setup(cfg: JobConfig) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id.

    Jobs started together on a new store can all find the experiment missing; the ones whose
    creation then fails on its unique name take the one that won."""
    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is not None:
        return exp.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
    except MlflowException:
        exp = client.get_experiment_by_name(cfg.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id
