"""MLflow, and only here: runs, params, metrics, artifacts and the averaged model.

The default store is a sqlite database under `./mlruns` (works offline; `mlflow ui` opens it);
cluster jobs set `tracking.tracking_uri` (or MLFLOW_TRACKING_URI) to the head node's server.
Metric steps are examples seen, so a resumed run's curves continue where they stopped.

Its parts: `store` (where runs are kept), `job` (one training job as one run) and `runs`
(parent and child runs, and reading runs back). Code outside imports from the package.
"""

from __future__ import annotations

from distinception.tracking.job import (
    SYSTEM_METRICS_S,
    TRAIN_METRICS,
    MlflowCallback,
    chart_metrics,
    chart_name,
    dataset_input,
    default_run_name,
    describe_run,
    load_model,
    log_model,
    plot_history,
    run_tags,
    source_tags,
)
from distinception.tracking.runs import (
    ENSEMBLE_FILE,
    KIND_TAG,
    TRIAL_TAG,
    child_runs,
    close_child_runs,
    end_run,
    log_figure,
    log_json,
    log_metrics,
    log_table,
    log_text,
    model_run_id,
    parent_run,
    read_json_artifact,
    record_child_run,
    run_config,
    run_exists,
    run_kind,
    start_parent_run,
)
from distinception.tracking.store import (
    DEFAULT_DIR,
    default_tracking_uri,
    redact,
    setup,
    tracking_uri,
    ui_command,
)

__all__ = [
    "DEFAULT_DIR",
    "ENSEMBLE_FILE",
    "KIND_TAG",
    "SYSTEM_METRICS_S",
    "TRAIN_METRICS",
    "TRIAL_TAG",
    "MlflowCallback",
    "chart_metrics",
    "chart_name",
    "child_runs",
    "close_child_runs",
    "dataset_input",
    "default_run_name",
    "default_tracking_uri",
    "describe_run",
    "end_run",
    "load_model",
    "log_figure",
    "log_json",
    "log_metrics",
    "log_model",
    "log_table",
    "log_text",
    "model_run_id",
    "parent_run",
    "plot_history",
    "read_json_artifact",
    "record_child_run",
    "redact",
    "run_config",
    "run_exists",
    "run_kind",
    "run_tags",
    "setup",
    "source_tags",
    "start_parent_run",
    "tracking_uri",
    "ui_command",
]
