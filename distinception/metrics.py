"""The scoring arithmetic: top-1/top-5 error with softmax averaged over crops (and, for ensembles,
over models), and the Table 3 grid. No MLflow: the averager scores with it during training, and
`distinception.evaluation` (the `distinception evaluate` command) wraps it.

Averaging probabilities rather than taking the max over crops is what the paper found best.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


@torch.no_grad()
def crop_probabilities(model: nn.Module, views: torch.Tensor) -> torch.Tensor:
    """Softmax averaged over the crops of each image: views [B, V, 3, S, S] -> probs [B, K].

    All crops of a batch go through the model as one batch, which is what makes 144 crops cheap.
    """
    b, v = views.shape[:2]
    logits = model(views.reshape(b * v, *views.shape[2:]))
    return torch.softmax(logits.float(), dim=1).reshape(b, v, -1).mean(dim=1)


def topk_errors(probs: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict:
    """Fractions of images whose label is not among the k most probable classes."""
    out = {}
    for k in ks:
        k_eff = min(k, probs.shape[1])
        top = probs.topk(k_eff, dim=1).indices
        hit = (top == labels[:, None]).any(dim=1)
        out[f"top{k}_error"] = float(1.0 - hit.float().mean()) if len(labels) else float("nan")
    return out


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    ks: Iterable[int] = (1, 5),
) -> dict:
    """Top-k errors of one model over (views, labels) batches; returns errors and the count."""
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for views, y in batches:
        probs.append(crop_probabilities(model, views))
        labels.append(y)
    model.train(was_training)
    if not probs:
        return {f"top{k}_error": float("nan") for k in ks} | {"images": 0}
    p, y = torch.cat(probs), torch.cat(labels)
    return topk_errors(p, y, ks) | {"images": len(y)}


def ensemble_probabilities(member_probs: list[torch.Tensor]) -> torch.Tensor:
    """Softmax probabilities averaged over models (each already averaged over its crops)."""
    return torch.stack(member_probs).mean(dim=0)


@torch.no_grad()
def member_probabilities(
    models: list[nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Crop-averaged probabilities of every model over one pass of the data: ([N, K] per model,
    labels [N]). Each batch is decoded and cropped once and shown to all models."""
    for m in models:
        # A logged model is an exported inference graph: already in eval mode, and its
        # `eval()` raises.
        with contextlib.suppress(NotImplementedError):
            m.eval()
    probs: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    for views, y in batches:
        for i, m in enumerate(models):
            probs[i].append(crop_probabilities(m, views))
        labels.append(y)
    if not labels:
        raise ValueError("no images to evaluate")
    return [torch.cat(p) for p in probs], torch.cat(labels)


def table3_grid(
    by_scheme: dict[str, tuple[list[torch.Tensor], torch.Tensor, int]],
) -> list[dict[str, Any]]:
    """Table 3's layout: for 1..K models (the first k members) and each crop scheme, the
    top-1/top-5 error of probabilities averaged over crops, then over models; cost = models x
    crops. `by_scheme` maps a scheme to (per-model probabilities, labels, crops per image)."""
    rows = []
    for scheme, (member, labels, crops) in by_scheme.items():
        for k in range(1, len(member) + 1):
            errs = topk_errors(ensemble_probabilities(member[:k]), labels)
            rows.append(
                {
                    "models": k,
                    "crops": crops,
                    "scheme": scheme,
                    "cost": k * crops,
                    "top1_error": errs["top1_error"],
                    "top5_error": errs["top5_error"],
                    "images": len(labels),
                }
            )
    rows.sort(key=lambda r: (r["models"], r["crops"]))
    return rows


def patterns(rows: list[dict[str, Any]], key: str = "top1_error") -> dict[str, str]:
    """Whether the paper's two patterns hold in `rows`: more crops (at a fixed number of models)
    and more models (at a fixed crop scheme) give lower error. 'holds' means never higher."""
    out = {}
    groups: dict[tuple[str, Any], list[tuple[int, float]]] = {}
    for r in rows:
        groups.setdefault(("crops", r["models"]), []).append((r["crops"], r[key]))
        groups.setdefault(("models", r["scheme"]), []).append((r["models"], r[key]))
    for axis in ("crops", "models"):
        broken = []
        series = [(g, sorted(v)) for (a, g), v in groups.items() if a == axis and len(v) > 1]
        for g, pts in series:
            for (x0, e0), (x1, e1) in itertools.pairwise(pts):
                if e1 > e0 + 1e-12:
                    where = f"{g} models" if axis == "crops" else f"{g} crops"
                    broken.append(f"{where}: {x0}->{x1} {axis} raised {key} {e0:.4f}->{e1:.4f}")
        if not series:
            out[axis] = "not measured (one value only)"
        else:
            out[axis] = "holds" if not broken else "does not hold: " + "; ".join(broken)
    return out


def format_grid(rows: list[dict[str, Any]]) -> str:
    lines = ["models  crops  scheme     cost   top-1 err  top-5 err"]
    for r in rows:
        lines.append(
            f"{r['models']:>6}  {r['crops']:>5}  {r['scheme']:<9} {r['cost']:>5}   "
            f"{100 * r['top1_error']:7.2f}%   {100 * r['top5_error']:7.2f}%"
        )
    return "\n".join(lines)


def plot_grid(rows: list[dict[str, Any]]):
    """Error against cost (models x crops, log x), one line per number of models."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "top1_error", "top-1"), (axes[1], "top5_error", "top-5")):
        for k in sorted({r["models"] for r in rows}):
            pts = sorted((r["cost"], r[key], r["crops"]) for r in rows if r["models"] == k)
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{k} model")
            for cost, err, crops in pts:
                ax.annotate(f"{crops}c", (cost, 100 * err), fontsize=7, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("cost (models x crops)")
        ax.set_ylabel(f"{label} error (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
