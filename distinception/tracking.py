"""MLflow, and only here: runs, params, metrics, artifacts and the averaged model.

The default store is a sqlite database under `./mlruns` (works offline; `mlflow ui` opens it);
cluster jobs set `tracking.tracking_uri` (or MLFLOW_TRACKING_URI) to the head node's server.
Metric steps are examples seen, so a resumed run's curves continue where they stopped.
"""

from __future__ import annotations

import io
import os
import platform
import re
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.tracking import MlflowClient

from distinception import __version__
from distinception.config import JobConfig
from distinception.ps.coordinator import Hooks, TrainResult

DEFAULT_DIR = "mlruns"


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


def run_tags() -> dict[str, str]:
    import ray
    import torchvision

    return {
        "distinception.version": __version__,
        "ray.version": ray.__version__,
        "torch.version": torch.__version__,
        "torchvision.version": torchvision.__version__,
        "python.version": platform.python_version(),
    }


class MlflowHooks(Hooks):
    """Records one training job as one MLflow run (or a nested child of `parent_run_id`)."""

    def __init__(self, cfg: JobConfig, parent_run_id: str | None = None) -> None:
        self.cfg = cfg
        self.parent_run_id = parent_run_id
        self.uri = tracking_uri(cfg)
        self.run_id: str | None = None
        self.client: MlflowClient | None = None

    def on_start(self, cfg: JobConfig, info: dict[str, Any]) -> str | None:
        experiment_id = setup(cfg)
        self.client = MlflowClient(self.uri)
        if info.get("run_id"):
            self.run_id = info["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(
                self.run_id, "distinception.resumed_at_examples", str(info["resumed_from_examples"])
            )
            return self.run_id
        tags = run_tags()
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(
            experiment_id, run_name=cfg.tracking.run_name or cfg.name, tags=tags
        )
        self.run_id = run.info.run_id
        params = {k: redact(str(v)) for k, v in cfg.flat().items()}
        params |= {
            "info.params": str(info["params"]),
            "info.num_classes": str(info["num_classes"]),
            "info.train_examples": str(info["train_examples"]),
            "info.data_path": redact(str(info["data_path"])),
        }
        items = sorted(params.items())
        for i in range(0, len(items), 100):
            batch = [mlflow.entities.Param(k, v) for k, v in items[i : i + 100]]
            self.client.log_batch(self.run_id, params=batch)
        self.client.log_text(self.run_id, redact(cfg.to_yaml()), "config.yaml")
        return self.run_id

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not (self.client and self.run_id):
            return
        ts = int(time.time() * 1000)
        batch = [
            mlflow.entities.Metric(k, float(v), ts, int(step))
            for k, v in metrics.items()
            if v == v  # NaN metrics are dropped rather than plotted as gaps
        ]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def on_checkpoint(self, directory: str, progress: dict[str, Any]) -> None:
        if self.client and self.run_id:
            self.client.set_tag(self.run_id, "distinception.checkpoint_dir", directory)

    def on_end(self, result: TrainResult, model: torch.nn.Module | None) -> None:
        if not (self.client and self.run_id):
            return
        self.client.log_dict(self.run_id, _result_dict(result), "result.json")
        png = plot_history(result)
        if png is not None:
            self.client.log_image(self.run_id, png, "training.png")
        if model is not None and self.cfg.tracking.log_model:
            log_model(self.run_id, model, self.cfg)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def on_failure(self, error: BaseException) -> None:
        if not (self.client and self.run_id):
            return
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_tag(
            self.run_id, "distinception.error", f"{type(error).__name__}: {error}"[:500]
        )
        self.client.set_terminated(self.run_id, status=status)


def log_model(run_id: str, model: torch.nn.Module, cfg: JobConfig) -> None:
    """The averaged model as an MLflow PyTorch model, loadable with `load_model` below.

    Saved as a `torch.export` program ("pt2"), not a pickle: loading it runs no arbitrary code,
    and the loaded model is the inference graph (logits only, eval mode). The example has a
    batch of 2 so the exported batch dimension stays dynamic.
    """
    import numpy as np

    size = cfg.model.input_size
    example = np.zeros((2, 3, size, size), dtype=np.float32)
    with mlflow.start_run(run_id=run_id):
        mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "torchvision"],
            registered_model_name=cfg.tracking.register_as or None,
        )


def load_model(model_uri: str) -> torch.nn.Module:
    """A logged model (`runs:/ID/model`, a local path, ...) loaded with MLflow's pickle guard on.

    MLflow 3.17 allows pickle by default; with the guard on it loads a `pt2` archive only after
    checking every record is plain data, so a tampered model in a shared store cannot run code.
    """
    import mlflow.pytorch
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION as guard

    before = os.environ.get(guard.name)
    os.environ[guard.name] = "false"
    try:
        return mlflow.pytorch.load_model(model_uri)
    finally:
        if before is None:
            os.environ.pop(guard.name, None)
        else:
            os.environ[guard.name] = before


def _result_dict(result: TrainResult) -> dict[str, Any]:
    return {
        "examples": result.examples,
        "epochs": result.epochs,
        "seconds": result.seconds,
        "examples_per_s": result.examples_per_s,
        "updates": result.updates,
        "final": result.final,
        "faults": result.faults,
        "refused": result.refused,
        "staleness_hist": {str(k): v for k, v in sorted(result.staleness_hist.items())},
    }


def plot_history(result: TrainResult):
    """Loss and validation error against examples seen, as a PIL image (None if nothing to plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    loss = [(h["examples"], h["loss"]) for h in result.history if "loss" in h]
    evals = [h for h in result.history if "polyak_top1_error" in h]
    if not loss and not evals:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    if loss:
        a1.plot(*zip(*loss, strict=True), label="train loss")
    a1.set_xlabel("examples seen")
    a1.set_ylabel("loss")
    a1.grid(alpha=0.3)
    for key, label in (("raw_top1_error", "raw top-1"), ("polyak_top1_error", "Polyak top-1")):
        pts = [(h["examples"], h[key]) for h in evals if key in h]
        if pts:
            a2.plot(*zip(*pts, strict=True), marker="o", label=label)
    a2.set_xlabel("examples seen")
    a2.set_ylabel("validation error")
    a2.grid(alpha=0.3)
    a2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


__all__ = [
    "MlflowHooks",
    "default_tracking_uri",
    "load_model",
    "redact",
    "setup",
    "tracking_uri",
    "ui_command",
]
