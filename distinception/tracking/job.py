"""One training job as one MLflow run: its tags, data set input, description, metrics, model and
result, recorded by `MlflowCallback`."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import io
import os
import platform
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from distinception.config import GOOGLENET, JobConfig
from distinception.model.archs import describe_model
from distinception.ps.callbacks import Callback, TrainResult
from distinception.tracking.store import (
    redact,
    setup,
    tracking_uri,
)


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
    root = Path(__file__).resolve().parents[2]  # the checkout: distinception/tracking/job.py
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
    m, ps, opt, run = cfg.model, cfg.ps, cfg.optim, cfg.run
    budget = (
        f"{run.max_examples:,} examples"
        if run.max_examples
        else f"{run.epochs:g} epochs"
        if run.epochs
        else f"{run.max_seconds:g} s"
    )
    data = redact(str(info["data_path"]))
    return (
        f"**{cfg.name}**: {describe_model(m)} and {m.input_size} px "
        f"({int(info['params']):,} parameters), {info['num_classes']} classes, "
        f"{int(info['train_examples']):,} training images from `{data}`.\n\n"
        f"Asynchronous SGD: {ps.num_replicas} replicas, {ps.num_shards} shards, "
        f"{opt.optimizer} lr {opt.lr:g}, momentum {opt.momentum:g} (correction "
        f"{ps.momentum_correction}), batch {cfg.data.batch_size}, staleness {ps.staleness}; "
        f"{cfg.averager.polyak} Polyak averaging; budget {budget}, seed {run.seed}."
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


def log_dataset_input(client: MlflowClient, run_id: str, dataset: Any, tries: int = 5) -> None:
    """Link `dataset` (a `dataset_input`) to the run, surviving runs that link the same one at
    the same moment.

    MLflow's store looks a data set up and inserts it when missing in two steps, so trials of a
    sweep that start together can both insert it, and all but one fail on the table's unique
    key (measured: 7 to 11 of 40 runs, linking one data set 8 at a time). The loser's
    transaction is rolled back whole, and on the next try the set exists and is only linked."""
    for attempt in range(tries):
        try:
            client.log_inputs(run_id, datasets=[dataset])
            return
        except MlflowException as err:
            text = str(err).lower()
            if attempt == tries - 1 or not ("unique" in text or "duplicate" in text):
                raise
            time.sleep(0.05 * (attempt + 1))


def default_run_name(cfg: JobConfig, data_path: str) -> str:
    """What was trained, for a run the user did not name: the recipe, the data set and the model
    (`demo-builtin-bn0.25-64px`, `demo-flowers-bn1-32px`, `digits-resnet18-32px`), so runs on
    other data or models do not all show up as `demo`."""
    data = data_path.rstrip("/").rsplit("/", 1)[-1] or "data"
    if data.startswith("generated-"):  # the built-in set's cache directory
        data = "builtin"
    m = cfg.model
    if m.arch == GOOGLENET:
        model = f"{m.variant}{m.width:g}"
    else:  # `digits-resnet18-32px`, `digits-mobilenet_v3_small0.5-32px`
        model = m.arch.rpartition(":")[2] + (f"{m.width:g}" if m.width != 1.0 else "")
    parts = [cfg.name] + ([data] if data != cfg.name else [])
    return "-".join([*parts, model, f"{m.input_size}px"])


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
            log_dataset_input(self.client, self.run_id, dataset)
        self._watch_system()
        return self.run_id

    def on_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not (self.client and self.run_id):
            return
        ts = int(time.time() * 1000)
        named = chart_metrics(metrics, polyak=self.cfg.averager.polyak != "off")
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
        tags = {"recipe": cfg.name, "model.arch": cfg.model.arch}
        if cfg.model.arch == GOOGLENET:
            tags["model.variant"] = cfg.model.variant
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
