"""Scoring: top-1/top-5 error with softmax averaged over crops (and, for ensembles, over models).

Averaging probabilities rather than taking the max over crops is what the paper found best.
"""

from __future__ import annotations

from collections.abc import Iterable

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
