"""Where runs are stored: the tracking URI a job uses, and how a user opens it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from distinception.config import JobConfig

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


_USERINFO = re.compile(r"([A-Za-z][\w+.-]*://[^/@\s:]*):[^/@\s]+@")
_SECRET_QUERY = re.compile(
    r"(?i)([?&](?:token|access_token|api_key|key|secret|password|sig|signature|"
    r"x-amz-signature|x-amz-credential|x-amz-security-token)=)[^&\s]+"
)


def redact(text: str) -> str:
    """Hide passwords in URIs (user:secret@host) and secret query parameters.

    Tracking URIs and data paths may carry credentials; params, artifacts and printed reports
    get this form, so a secret never ends up in the tracking store or a terminal log.
    """
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1:***@", text))


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1"
    return f"open {redact(uri)} in a browser"


def setup(cfg: JobConfig) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
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
    return client.create_experiment(cfg.tracking.experiment, artifact_location=artifacts)
