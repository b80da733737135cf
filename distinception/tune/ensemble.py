"""`distinception ensemble`: K members trained as the paper trained its 7 models.

All members start from the same initial weights (`run.init_seed`) and differ only in their
augment and the order of their data (`run.seed`). Members run as Tune trials, as many at
once as the cluster holds whole and the rest queued, each an MLflow child run under the ensemble's
parent run; the parent records the members (`ensemble.json`) so `distinception evaluate` can score
the ensemble later with any crop scheme.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distinception.config import AUGMENT_PRESETS, ConfigError, JobConfig, load_yaml
from distinception.tune.experiment import plan, slots
from distinception.tune.space import apply_sample
from distinception.tune.trials import run_trials


@dataclass
class EnsembleResult:
    parent_run_id: str
    members: list[dict[str, Any]]
    seconds: float
    max_concurrent: int


def _latest_sweep(root: str = "sweeps") -> Path:
    found = sorted(Path(root).glob("*/ranked.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise ConfigError(
            f"--augments=best-of-sweep: expected a finished sweep under {root}/ "
            "(run `distinception sweep` first, or pass --sweep DIR)"
        )
    return found[-1].parent


def _sweep_overlays(sweep_dir: str | None, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The sampled fields of the best `count` trials of a sweep (fewer if it had fewer)."""
    path = Path(sweep_dir) if sweep_dir else _latest_sweep()
    ranked_file = path / "ranked.json"
    if not ranked_file.is_file():
        raise ConfigError(f"--sweep={str(path)!r}: expected a sweep directory with ranked.json")
    ranked = json.loads(ranked_file.read_text())
    space_keys = [k for k in ranked[0] if k.count(".") == 1] if ranked else []
    usable = [r for r in ranked if r["status"] != "failed"]
    if not usable:
        raise ConfigError(f"--sweep={str(path)!r}: no trial of that sweep finished")
    return [
        (f"sweep:{r['trial']}", {k: r[k] for k in space_keys if r.get(k) is not None})
        for r in usable[:count]
    ]


def parse_augments(spec: str, members: int, sweep_dir: str | None = None) -> list[tuple[str, dict]]:
    """Named overlays, one per distinct augment: presets, YAML files, or the best of a sweep.

    A YAML file contributes its `augment` section and `optim.lr`; a sweep trial contributes every
    field its sweep sampled.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "best-of-sweep":
            out.extend(_sweep_overlays(sweep_dir, members))
        elif item in AUGMENT_PRESETS:
            out.append((item, {"augment": item}))
        elif item.endswith((".yaml", ".yml")):
            cfg = load_yaml(item)
            augment = {f"augment.{k}": v for k, v in dataclasses.asdict(cfg.augment).items()}
            out.append((Path(item).stem, augment | {"optim.lr": cfg.optim.lr}))
        else:
            raise ConfigError(
                f"--augments item {item!r}: expected best-of-sweep, a YAML file or one of "
                + ", ".join(AUGMENT_PRESETS)
            )
    if not out:
        raise ConfigError(f"--augments={spec!r}: expected at least one augment")
    return out


def member_configs(
    base: JobConfig, members: int, augments: list[tuple[str, dict[str, Any]]]
) -> list[JobConfig]:
    """Member k: augment k mod A, data order seed+k, the same initial weights for all."""
    out = []
    for k in range(members):
        label, overlay = augments[k % len(augments)]
        cfg = base
        if "augment" in overlay:  # a preset name replaces the whole augment section
            from distinception.config import from_dict

            cfg = from_dict({"augment": overlay["augment"]}, cfg)
        cfg = apply_sample(cfg, {k2: v for k2, v in overlay.items() if k2 != "augment"})
        run = dataclasses.replace(cfg.run, seed=base.run.seed + k, init_seed=base.run.model_seed)
        # Every member's model is a version of one registered model, tagged with its augment.
        tracking = dataclasses.replace(
            cfg.tracking,
            run_name=f"{base.name}-member{k}-{label}",
            register_as=base.tracking.register_as or f"{base.name}-ensemble",
        )
        out.append(cfg.replace(run=run, tracking=tracking, name=f"{base.name}-member{k}"))
    return out


def _member(config: dict[str, Any], *, cfgs: list[JobConfig]) -> JobConfig:
    return cfgs[int(config["member"])]


def ensemble(
    cfg: JobConfig,
    *,
    members: int = 7,
    augments: str = "paper,caffe",
    sweep_dir: str | None = None,
    max_concurrent: int | None = None,
    out_dir: str = "",
    address: str | None = None,
) -> EnsembleResult:
    from ray import tune

    from distinception.tracking import ENSEMBLE_FILE, log_json

    overlays = parse_augments(augments, members, sweep_dir)
    if not cfg.tracking.log_model:
        raise ConfigError("tracking.log_model=false: an ensemble needs its members' models logged")
    if members < 1:
        raise ConfigError(f"--members={members}: expected an integer >= 1")
    p = plan(cfg, "ensemble", out_dir)
    metric, out = p.metric, p.out
    t0 = time.perf_counter()
    params = {
        "ensemble.members": members,
        "ensemble.augments": augments,
        "ensemble.init_seed": cfg.run.model_seed,
    }
    with slots(p, params, address=address, max_concurrent=max_concurrent, trials=members) as run:
        cfgs = member_configs(run.trial_base, members, overlays)
        parent = run.parent_run_id
        outcomes = run_trials(
            run.trial_base,
            functools.partial(_member, cfgs=cfgs),
            {"member": tune.grid_search(list(range(members)))},
            parent_run_id=parent,
            storage=str(out),
            name="tune",
            num_samples=1,
            metric=metric,
            max_concurrent=run.max_concurrent,
        )
        record = []
        for o in sorted(outcomes, key=lambda o: int(o.config["member"])):
            k = int(o.config["member"])
            record.append(
                {
                    "member": k,
                    "status": o.status,
                    "run_id": o.run_id,
                    "model_uri": f"runs:/{o.run_id}/model" if o.run_id else "",
                    "augment": overlays[k % len(overlays)][0],
                    "seed": cfgs[k].run.seed,
                    "init_seed": cfgs[k].run.model_seed,
                    metric: o.metrics.get(metric),
                    "error": o.error,
                }
            )
        finished = [m for m in record if m["status"] == "finished"]
        doc = {
            "parent_run_id": parent,
            "members": record,
            "finished": len(finished),
            "input_size": cfg.model.input_size,
            "metric": metric,
        }
        (out / ENSEMBLE_FILE).write_text(json.dumps(doc, indent=1, default=str))
        log_json(p.tracking_uri, parent, doc, ENSEMBLE_FILE)
        if not finished:
            raise RuntimeError(f"ensemble: no member finished; see {out / ENSEMBLE_FILE}")
    concurrent = run.max_concurrent
    return EnsembleResult(parent, record, time.perf_counter() - t0, concurrent)


def format_members(result: EnsembleResult) -> str:
    lines = [f"ensemble {result.parent_run_id}: {len(result.members)} members"]
    for m in result.members:
        err = m.get("polyak_top1_error") or m.get("raw_top1_error")
        score = f"{100 * err:5.1f}% top-1" if isinstance(err, float) else "   -  "
        lines.append(
            f"  member {m['member']}  {m['status']:<8}  augment {m['augment']:<14} "
            f"seed {m['seed']}  {score}  run {m['run_id']}"
        )
    return "\n".join(lines)


__all__ = ["EnsembleResult", "ensemble", "format_members", "member_configs", "parse_augments"]
