"""`distinception train`: one asynchronous parameter-server job, recorded in MLflow.

`distinception.train` (the public API) and the command both run a job through here."""

from __future__ import annotations

from collections.abc import Sequence

from distinception.config import ConfigError, JobConfig
from distinception.ps.callbacks import Callback, TrainResult
from distinception.ps.coordinator import Coordinator, load_progress_config
from distinception.tracking import MlflowCallback, redact, tracking_uri, ui_command


def train(
    cfg: JobConfig,
    *,
    callbacks: Sequence[Callback] = (),
    track: bool = True,
    address: str | None = None,
    resume: str | None = None,
    parent_run_id: str | None = None,
    straggler: float = 1.0,
) -> TrainResult:
    """Train `cfg` (or continue the job checkpointed in `resume`), logged to MLflow with `track`.

    The MLflow callback comes first: the job's run id is the run it opens, and the other
    callbacks see every event after it is recorded."""
    if not 1 <= straggler <= 100:
        raise ConfigError(f"straggler={straggler!r}: expected a number in [1, 100] (1 = none)")
    if resume:
        cfg = load_progress_config(resume)
    tracking = [MlflowCallback(cfg, parent_run_id=parent_run_id)] if track else []
    coordinator = Coordinator(
        cfg,
        [*tracking, *callbacks],
        checkpoint_dir=resume or None,
        resume=bool(resume),
        straggler=straggler,
    )
    return coordinator.run(address=address)


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def format_report(cfg: JobConfig, result: TrainResult) -> str:
    f = result.final
    polyak = f"Polyak-averaged weights ({f.get('polyak_samples', 0)} samples)"
    head = f"validation ({f.get('val_images', 0)} images, center crop)"
    w = max(37, len(polyak) + 2)  # the rows' figures in one column
    lines = [
        f"distinception train: {cfg.name} — {result.examples:,} examples "
        f"({result.epochs:.2f} epochs) in {result.seconds:.0f} s, "
        f"{result.examples_per_s:.0f} img/s, {result.updates:,} updates per shard",
        f"  {head:<{w + 2}}top-1 err   top-5 err",
        f"    {'raw weights':<{w}}{_pct(f['raw_top1_error'])}      {_pct(f['raw_top5_error'])}",
        f"    {polyak:<{w}}{_pct(f['polyak_top1_error'])}      {_pct(f['polyak_top5_error'])}",
    ]
    if result.refused:
        lines.append(
            "  pushes refused: " + ", ".join(f"{k} {v}" for k, v in result.refused.items())
        )
    faults = {k: v for k, v in result.faults.items() if v}
    if faults:
        lines.append("  faults survived: " + ", ".join(f"{k} {v}" for k, v in faults.items()))
    if result.checkpoint_dir:
        lines.append(f"  checkpoint: {result.checkpoint_dir} (resume with --resume)")
    uri = tracking_uri(cfg)
    lines.append(f"  MLflow run {result.run_id} in {redact(uri)}")
    lines.append(f"  open it with: {ui_command(uri)}")
    return "\n".join(lines)
