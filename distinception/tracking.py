"""MLflow, and only here: runs, params, metrics, artifacts and the averaged model.

The default store is a sqlite database under `./mlruns` (works offline; `mlflow ui` opens it);
cluster jobs set `tracking.tracking_uri` (or MLFLOW_TRACKING_URI) to the head node's server.
Metric steps are examples seen, so a resumed run's curves continue where they stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import os
import platform
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.tracking import MlflowClient

from distinception.config import JobConfig
from distinception.ps.callbacks import Callback, TrainResult

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


def run_tags() -> dict[str, str]:
    import ray
    import torchvision

    return {
        "distinception.version": importlib.metadata.version("distinception"),
        "ray.version": ray.__version__,
        "torch.version": torch.__version__,
        "torchvision.version": torchvision.__version__,
        "python.version": platform.python_version(),
    }


def source_tags() -> dict[str, str]:
    """What MLflow shows as a run's Source: the command, and the git commit when the package
    runs from a checkout."""
    import subprocess
    import sys

    argv = sys.argv or [""]
    ours = os.path.basename(argv[0]) == "distinception" or argv[0].endswith(
        "distinception/cli/__main__.py"
    )
    tags = {
        # The command typed (`distinception train`); a Tune trial's worker process has no
        # command of ours, its parent run has.
        "mlflow.source.name": "distinception" + (f" {argv[1]}" if ours and len(argv) > 1 else ""),
        "mlflow.source.type": "JOB" if os.environ.get("RAY_JOB_ID") else "LOCAL",
    }
    root = Path(__file__).resolve().parent.parent
    if (root / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if commit:
                tags["mlflow.source.git.commit"] = commit
    return tags


def describe_run(cfg: JobConfig, info: dict[str, Any]) -> str:
    """The run's description in the MLflow UI: what was trained, on what, and how."""
    m, ps, run = cfg.model, cfg.ps, cfg.run
    budget = (
        f"{run.max_examples:,} examples"
        if run.max_examples
        else f"{run.epochs:g} epochs"
        if run.epochs
        else f"{run.max_seconds:g} s"
    )
    data = redact(str(info["data_path"]))
    return (
        f"**{cfg.name}**: {m.variant} GoogLeNet at width {m.width:g} and {m.input_size} px "
        f"({int(info['params']):,} parameters), {info['num_classes']} classes, "
        f"{int(info['train_examples']):,} training images from `{data}`.\n\n"
        f"Asynchronous SGD: {ps.num_replicas} replicas, {ps.num_shards} shards, "
        f"{ps.optimizer} lr {ps.lr:g}, momentum {ps.momentum:g} (correction "
        f"{ps.momentum_correction}), batch {cfg.data.batch_size}, staleness {ps.staleness}; "
        f"{ps.polyak} Polyak averaging; budget {budget}, seed {run.seed}."
    )


def dataset_input(data_path: str) -> Any:
    """The training data as an MLflow dataset input: name, manifest digest, source and the
    splits with their counts (None when the manifest cannot be read)."""
    import hashlib
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    from distinception.data.shards import DataError, open_manifest

    try:
        manifest = open_manifest(data_path)
    except (DataError, OSError):
        return None
    profile = {
        "num_classes": manifest.num_classes,
        "splits": dict(manifest.counts),
        "image_size": manifest.image_size,
    }
    files = {k: [(f.name, f.rows, f.bytes) for f in v] for k, v in manifest.files.items()}
    doc = json.dumps({"classes": manifest.classes, "files": files}, sort_keys=True)
    name = data_path.rstrip("/").rsplit("/", 1)[-1] or "data"
    dataset = Dataset(
        name="builtin" if name.startswith("generated-") else name,
        digest=hashlib.sha256(doc.encode()).hexdigest()[:16],
        source_type="local" if "://" not in data_path else data_path.split("://")[0],
        source=json.dumps({"uri": redact(data_path)}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


def default_run_name(cfg: JobConfig, data_path: str) -> str:
    """What was trained, for a run the user did not name: the recipe, the data set and the model
    (`demo-builtin-bn0.25-64px`, `demo-flowers-bn1-32px`), so runs on other data or models do not
    all show up as `demo`."""
    data = data_path.rstrip("/").rsplit("/", 1)[-1] or "data"
    if data.startswith("generated-"):  # the built-in set's cache directory
        data = "builtin"
    m = cfg.model
    parts = [cfg.name] + ([data] if data != cfg.name else [])
    return "-".join([*parts, f"{m.variant}{m.width:g}", f"{m.input_size}px"])


#: Seconds between samples of the system metrics.
SYSTEM_METRICS_S = 10.0

#: The training-side metrics; every other non-evaluation metric a job reports is the parameter
#: server's (updates, staleness, versions, transport, elastic pool).
TRAIN_METRICS = frozenset({"loss", "examples_per_s", "epoch", "lr", "momentum"})


def chart_name(key: str) -> str:
    """The name a job's metric has in MLflow. Metrics that belong together share a prefix
    (`train/`, `val/`, `ps/`, `faults/`; MLflow's own are `system/`), so the UI charts them as
    one group; the coordinator and Tune keep the bare names."""
    if "/" in key:
        return key
    if key.endswith("_error"):
        return "val/" + key
    if key.startswith("fault_"):
        return "faults/" + key.removeprefix("fault_")
    return ("train/" if key in TRAIN_METRICS else "ps/") + key


def chart_metrics(metrics: dict[str, float], polyak: bool) -> dict[str, float]:
    """`metrics` under their MLflow names, plus `val/top1_error` and `val/top5_error` (and their
    `final_` forms): the error of the weights the job serves (Polyak unless switched off), the
    one number to compare runs by."""
    out = {chart_name(k): float(v) for k, v in metrics.items()}
    scored = "polyak" if polyak else "raw"
    for final in ("", "final_"):
        for k in ("top1_error", "top5_error"):
            if f"{final}{scored}_{k}" in metrics:
                out[f"val/{final}{k}"] = float(metrics[f"{final}{scored}_{k}"])
    return out


class MlflowCallback(Callback):
    """Records one training job as one MLflow run (or a nested child of `parent_run_id`)."""

    def __init__(
        self,
        cfg: JobConfig,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.parent_run_id = parent_run_id
        self.tags = dict(tags or {})
        self.uri = tracking_uri(cfg)
        self.run_id: str | None = None
        self.client: MlflowClient | None = None
        self.monitor: Any = None

    def _watch_system(self) -> None:
        """CPU, memory, disk and network of this process's machine (and GPUs, where pynvml
        finds them) as `system/*` metrics, through MLflow's own system-metrics monitor."""
        import logging

        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self.monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=SYSTEM_METRICS_S, tracking_uri=self.uri
        )
        self.monitor.start()

    def _unwatch_system(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def on_start(self, cfg: JobConfig, info: dict[str, Any]) -> str | None:
        experiment_id = setup(cfg)
        self.client = MlflowClient(self.uri)
        if info.get("run_id"):
            self.run_id = info["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(
                self.run_id, "distinception.resumed_at_examples", str(info["resumed_from_examples"])
            )
            self._watch_system()
            return self.run_id
        tags = run_tags() | source_tags() | self.tags
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self.client.create_run(
            experiment_id,
            run_name=cfg.tracking.run_name or default_run_name(cfg, str(info["data_path"])),
            tags=tags,
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
        self.client.set_tag(self.run_id, "mlflow.note.content", describe_run(cfg, info))
        dataset = dataset_input(str(info["data_path"]))
        if dataset is not None:
            self.client.log_inputs(self.run_id, datasets=[dataset])
        self._watch_system()
        return self.run_id

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not (self.client and self.run_id):
            return
        ts = int(time.time() * 1000)
        named = chart_metrics(metrics, polyak=self.cfg.ps.polyak != "off")
        batch = [
            mlflow.entities.Metric(k, v, ts, int(step))
            for k, v in named.items()
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
        self._unwatch_system()
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
        self._unwatch_system()
        # SystemExit is how Ray Tune ends a trial its scheduler stopped.
        stopped = isinstance(error, (KeyboardInterrupt, SystemExit))
        status = "KILLED" if stopped else "FAILED"
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
    name = cfg.tracking.register_as or None
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "torchvision"],
            registered_model_name=name,
        )
    version = getattr(info, "registered_model_version", None)
    if name and version is not None:
        # The registry's versions say how each was trained: its run recipe and augmentation.
        client = MlflowClient(tracking_uri(cfg))
        tags = {"recipe": cfg.name, "model.variant": cfg.model.variant}
        tags |= {f"augment.{k}": str(v) for k, v in dataclasses.asdict(cfg.augment).items()}
        for key, value in tags.items():
            client.set_model_version_tag(name, str(version), key, value)


def load_model(model_uri: str, uri: str | None = None) -> torch.nn.Module:
    """A logged model (`runs:/ID/model`, a local path, ...) loaded with MLflow's pickle guard on;
    `uri` is the tracking store that resolves `runs:/` and `models:/` URIs.

    MLflow 3.17 allows pickle by default; with the guard on it loads a `pt2` archive only after
    checking every record is plain data, so a tampered model in a shared store cannot run code.
    """
    import mlflow.pytorch
    from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION as guard

    if uri:
        mlflow.set_tracking_uri(uri)
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
    if evals:  # a run with no evaluation has nothing to label (matplotlib would warn)
        a2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


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


__all__ = [
    "ENSEMBLE_FILE",
    "KIND_TAG",
    "TRIAL_TAG",
    "MlflowCallback",
    "chart_metrics",
    "chart_name",
    "child_runs",
    "close_child_runs",
    "default_tracking_uri",
    "end_run",
    "load_model",
    "log_figure",
    "log_json",
    "log_metrics",
    "log_table",
    "log_text",
    "model_run_id",
    "parent_run",
    "read_json_artifact",
    "redact",
    "run_config",
    "run_exists",
    "run_kind",
    "setup",
    "start_parent_run",
    "tracking_uri",
    "ui_command",
]
