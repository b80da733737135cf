"""`distinception evaluate`: score a training run, a logged model or an ensemble from MLflow.

The arithmetic (crop and model averaging, the Table 3 grid) lives in `distinception.metrics`,
which the parameter server also uses; this module adds finding the models in MLflow and logging
the grid back, so the parameter server never depends on MLflow.
"""

from __future__ import annotations

from typing import Any

from distinception.metrics import (
    format_grid,
    member_probabilities,
    patterns,
    plot_grid,
    table3_grid,
)

#: Bytes of crops per evaluation batch: 144 crops of a 224 px image are 87 MB as float32.
_BATCH_BYTES = 256 * 2**20


def _batch_for(crops: int, size: int) -> int:
    return max(1, min(128, _BATCH_BYTES // (crops * 3 * size * size * 4)))


def evaluate_target(
    target: str,
    schemes: list[str],
    *,
    uri: str,
    split: str = "val",
    limit: int = 0,
    data_path: str = "",
    log: bool = True,
) -> dict[str, Any]:
    """Score a training run, a logged model or an ensemble with each crop scheme.

    An ensemble gets the whole grid (1..K members x each scheme) in Table 3's layout. With `log`,
    the grid, its text table and an error-vs-cost plot are logged to the target's run.
    """
    import time

    import distinception.tracking as tracking
    from distinception.config import CROP_SCHEMES, check_crops
    from distinception.data.generated import shards_path
    from distinception.data.loader import eval_batches

    schemes = check_crops(schemes)
    kind, run_id, members = _resolve(target, uri)
    cfg = tracking.run_config(uri, tracking.model_run_id(uri, members[0]))
    path = data_path or shards_path(cfg.data)
    size = cfg.model.input_size
    t0 = time.perf_counter()
    models = [tracking.load_model(m, uri) for m in members]
    by_scheme = {}
    for scheme in dict.fromkeys(schemes):
        crops = CROP_SCHEMES[scheme]
        batches = eval_batches(
            path,
            split=split,
            input_size=size,
            batch_size=_batch_for(crops, size),
            scheme=scheme,
            limit=limit,
        )
        probs, labels = member_probabilities(models, batches)
        by_scheme[scheme] = (probs, labels, crops)
    rows = table3_grid(by_scheme)
    report = {
        "target": target,
        "kind": kind,
        "run_id": run_id,
        "members": members,
        "split": split,
        "images": rows[0]["images"],
        "rows": rows,
        "patterns": {
            "top1": patterns(rows, "top1_error"),
            "top5": patterns(rows, "top5_error"),
        },
        "seconds": time.perf_counter() - t0,
    }
    if log:
        tracking.log_table(uri, run_id, rows, "table3.json")
        tracking.log_text(uri, run_id, format_report(report), "table3.txt")
        tracking.log_figure(uri, run_id, plot_grid(rows), "table3.png")
    return report


def _resolve(target: str, uri: str) -> tuple[str, str, list[str]]:
    """(kind, run id to log to, model URIs) of an evaluation target."""
    import distinception.tracking as tracking
    from distinception.config import ConfigError

    if target.startswith(("runs:/", "models:/", "m-")):
        return "model", tracking.model_run_id(uri, target), [target]
    if not tracking.run_exists(uri, target):
        raise ConfigError(
            f"TARGET={target!r}: expected a run id, an ensemble run id or a model URI "
            f"(runs:/ID/model, models:/NAME/VERSION) in {uri}"
        )
    kind = tracking.run_kind(uri, target)
    if kind == "ensemble":
        doc = tracking.read_json_artifact(uri, target, tracking.ENSEMBLE_FILE)
        uris = [m["model_uri"] for m in doc["members"] if m["status"] == "finished"]
        if not uris:
            raise ConfigError(f"TARGET={target!r}: that ensemble has no finished member")
        return "ensemble", target, uris
    if kind != "train":
        raise ConfigError(
            f"TARGET={target!r}: a {kind} run holds no model; evaluate one of its training "
            "runs or an ensemble"
        )
    return "model", target, [f"runs:/{target}/model"]


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"evaluate {report['target']} ({report['kind']}, {len(report['members'])} model(s), "
        f"{report['images']} {report['split']} images, {report['seconds']:.0f} s)",
        format_grid(report["rows"]),
    ]
    for metric, found in report["patterns"].items():
        for axis, verdict in found.items():
            lines.append(f"  more {axis} -> lower {metric} error: {verdict}")
    return "\n".join(lines)
