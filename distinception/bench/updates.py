"""`distinception bench updates`: the asynchronous update rules side by side, at equal examples.

Each named update is a set of config values (`ps.*`, `optim.*`) laid over the recipe; every
(replicas, update, seed) is one whole parameter-server training through real actors, scored as
a real run is (its averager's raw and Polyak weights, center crop, BatchNorm statistics
recomputed). The table gives mean ± the 95% interval over seeds of the final error, with the
staleness the shards measured, the momentum they ended with, the memory delay compensation
held, and the wall time, so the default update is chosen by measurement and anyone can re-run
the choice.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any

from distinception import api
from distinception.bench.choices import UPDATES, parse_updates
from distinception.bench.common import (
    describe_data,
    fit_cpus,
    header,
    local_ray,
    machine,
    markdown_table,
)
from distinception.bench.convergence import interval95
from distinception.config import ConfigError, apply_overrides, from_dict, nest
from distinception.data.generated import resolve_data
from distinception.model.archs import describe_model
from distinception.plots import bar_chart
from distinception.ps import histogram_mean
from distinception.recipes import get_recipe


def run_updates(
    replicas: tuple[int, ...] = (1, 2),
    updates: tuple[str, ...] = ("previous", "default", "dc"),
    seeds: int = 3,
    quick: bool = False,
    out_dir: str = "bench/results",
    recipe: str | None = None,
    overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Every (replicas, update, seed); writes updates.md and updates.png (mean Polyak error)."""
    updates = parse_updates(updates)
    if not replicas or min(replicas) < 1:
        raise ConfigError(f"--replicas={replicas}: expected integers >= 1")
    recipe = recipe or ("tiny" if quick else "demo")
    base = apply_overrides(get_recipe(recipe), overrides)
    if quick:
        base = from_dict({"run": {"epochs": 0.0, "max_examples": 1500}}, base)
    data, num_classes, _ = resolve_data(base)
    info = machine()
    results: dict[tuple[int, str], list[Any]] = {}
    t0 = time.perf_counter()
    with local_ray():
        for n in replicas:
            for name in updates:
                for seed in range(seeds):
                    cfg = from_dict(
                        {
                            **nest(UPDATES[name]),
                            "run": {
                                "seed": seed,
                                "max_seconds": 0.0,
                                "eval_interval_s": 1e9,
                                "progress": False,
                            },
                        },
                        fit_cpus(base, n),
                    )
                    res = api.train(cfg, track=False)
                    results.setdefault((n, name), []).append(res)
                    print(
                        f"bench updates: N={n} {name} seed {seed}: raw "
                        f"{100 * res.final['raw_top1_error']:.1f}%, Polyak "
                        f"{100 * res.final['polyak_top1_error']:.1f}%, {res.seconds:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    wall = time.perf_counter() - t0

    rows, groups = [], {}
    for (n, name), runs in results.items():
        raw = [r.final["raw_top1_error"] for r in runs]
        pol = [r.final["polyak_top1_error"] for r in runs]
        stale = [histogram_mean(r.staleness_hist) for r in runs]
        last = [next((h for h in reversed(r.history) if "momentum" in h), {}) for r in runs]
        momentum = [h.get("momentum", float("nan")) for h in last]
        dc = max((h.get("dc_bytes", 0.0) for h in last), default=0.0)
        rows.append(
            [
                n,
                name,
                f"{100 * statistics.mean(raw):.1f} ± {100 * interval95(raw):.1f}",
                f"{100 * statistics.mean(pol):.1f} ± {100 * interval95(pol):.1f}",
                f"{100 * min(pol):.1f}-{100 * max(pol):.1f}",
                f"{statistics.mean(stale):.2f}",
                f"{statistics.mean(momentum):.2f}",
                f"{dc / 2**20:.1f}",
                f"{statistics.mean(r.seconds for r in runs):.0f}",
            ]
        )
        groups.setdefault(f"N={n}", {})[name] = 100 * statistics.mean(pol)
    os.makedirs(out_dir, exist_ok=True)
    png = bar_chart(
        os.path.join(out_dir, "updates.png"),
        groups,
        "Polyak top-1 error % (mean)",
        f"{recipe}: async update rules, {seeds} seeds",
    )
    cmd = (
        "distinception bench updates"
        + (" --quick" if quick else "")
        + f" --recipe {recipe} --replicas {','.join(map(str, replicas))}"
        + f" --updates {','.join(updates)} --seeds {seeds}"
        + "".join(f" --set {o}" for o in overrides)
    )
    lines = [
        *header(cmd, info),
        f"Recipe `{recipe}` ({describe_model(base.model)}, "
        f"{base.model.input_size} px, {num_classes} classes, data {describe_data(data)}), batch "
        f"{base.data.batch_size}, lr {base.optim.lr}, momentum {base.optim.momentum}, budget "
        f"{base.run.epochs or base.run.max_examples} "
        f"{'epochs' if base.run.epochs else 'examples'} per run; whole run {wall:.0f} s. "
        "Updates: "
        + "; ".join(f"`{n}` = {UPDATES[n] or 'the recipe as it is'}" for n in updates)
        + ".",
        "",
        *markdown_table(
            [
                "replicas",
                "update",
                "raw top-1 error % (mean ± 95% CI)",
                "Polyak top-1 error % (mean ± 95% CI)",
                "Polyak range %",
                "mean staleness",
                "momentum at the end",
                "DC memory (MiB)",
                "seconds",
            ],
            rows,
        ),
        "",
        f"![updates]({os.path.basename(png)})",
    ]
    text = "\n".join(lines)
    with open(os.path.join(out_dir, "updates.md"), "w") as f:
        f.write(text + "\n")
    return {"text": text, "results": results, "png": png}
