"""`distinception bench staleness`: how stale the applied gradients are, against the number of
replicas and the staleness policy (none, scale, bound:k), and what that does to the final error
at an equal example budget. Staleness is the shards' own histogram (versions applied between a
replica's pull and its push), refusals are the shards' counts."""

from __future__ import annotations

import os
import time
from typing import Any

from distinception import api
from distinception.bench.common import (
    fit_cpus,
    header,
    local_ray,
    machine,
    markdown_table,
)
from distinception.config import apply_overrides, from_dict
from distinception.plots import line_plot
from distinception.ps import histogram_mean, histogram_quantile
from distinception.recipes import get_recipe


def run_staleness(
    replicas: tuple[int, ...] = (1, 2, 4),
    policies: tuple[str, ...] = ("none", "scale", "bound:1"),
    quick: bool = False,
    out_dir: str = "bench/results",
    recipe: str | None = None,
    budget: int | None = None,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One training run per (replicas, policy); writes staleness.md and staleness.png.
    `overrides` (`--set KEY=VALUE`) change the recipe of every run."""
    # The command that makes this table (`--replicas N` runs 1, N and 2N replicas).
    cmd = f"distinception bench staleness --replicas {max(1, max(replicas) // 2)}"
    cmd += " --quick" if quick else ""
    if policies != ("none", "scale", "bound:1"):
        cmd += f" --policies {','.join(policies)}"
    cmd += f" --budget {budget}" if budget else ""
    cmd += f" --recipe {recipe}" if recipe else ""
    cmd += "".join(f" --set {o}" for o in overrides)
    recipe = recipe or ("tiny" if quick else "demo")
    base = apply_overrides(get_recipe(recipe), overrides)
    budget = budget or (3000 if quick else 30000)
    info = machine()
    results: dict[tuple[int, str], Any] = {}
    t0 = time.perf_counter()
    with local_ray():
        for n in replicas:
            for policy in policies:
                cfg = from_dict(
                    {
                        "ps": {"staleness": policy},
                        "run": {
                            "epochs": 0.0,
                            "max_examples": budget,
                            "max_seconds": 0.0,
                            "eval_interval_s": 1e9,
                            "progress": False,
                        },
                    },
                    fit_cpus(base, n),
                )
                results[(n, policy)] = api.train(cfg, track=False)
    wall = time.perf_counter() - t0

    rows, series = [], {}
    for (n, policy), res in results.items():
        hist = {int(k): v for k, v in res.staleness_hist.items()}
        applied = sum(hist.values())
        mean = histogram_mean(hist)
        refused = sum(res.refused.values())
        rows.append(
            [
                n,
                policy,
                f"{mean:.2f}",
                f"{histogram_quantile(hist, 0.5):.0f}",
                f"{histogram_quantile(hist, 0.95):.0f}",
                max(hist, default=0),
                f"{refused / max(1, refused + applied):.1%}",
                f"{100 * res.final['raw_top1_error']:.1f}%",
                f"{100 * res.final['polyak_top1_error']:.1f}%",
                f"{res.seconds:.0f}",
            ]
        )
        series[f"N={n}, {policy}"] = [
            (k, hist.get(k, 0) / max(1, applied)) for k in range(max(hist, default=0) + 1)
        ]
    os.makedirs(out_dir, exist_ok=True)
    png = line_plot(
        os.path.join(out_dir, "staleness.png"),
        series,
        "staleness (versions)",
        "fraction of applied gradients",
        f"{recipe} model, {budget:,} examples per run",
    )
    shards = base.ps.num_shards
    lines = [
        *header(cmd, info),
        f"Recipe `{recipe}` ({shards} shard{'s' if shards != 1 else ''}), "
        f"{budget:,} examples per run; whole run {wall:.0f} s.",
        "",
        *markdown_table(
            [
                "replicas",
                "policy",
                "mean staleness",
                "p50",
                "p95",
                "max",
                "refused",
                "raw top-1 error",
                "Polyak top-1 error",
                "seconds",
            ],
            rows,
        ),
        "",
        f"![staleness]({os.path.basename(png)})",
    ]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "staleness.md"), "w") as f:
        f.write(text + "\n")
    return {"text": text, "results": results, "png": png}
