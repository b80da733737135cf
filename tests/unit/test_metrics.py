"""Crop and model averaging, checked where the expected probabilities are known by hand."""

from __future__ import annotations

import math

import torch
from torch import nn

from distinception.metrics import (
    crop_probabilities,
    ensemble_probabilities,
    member_probabilities,
    patterns,
    table3_grid,
    topk_errors,
)


class MeanLogits(nn.Module):
    """Logits (a * mean, 0, -a * mean): each crop's softmax follows from its mean pixel."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([self.a * m, torch.zeros_like(m), -self.a * m], dim=1)


def softmax3(z: float) -> list[float]:
    e = [math.exp(z), 1.0, math.exp(-z)]
    s = sum(e)
    return [v / s for v in e]


def test_probabilities_are_averaged_over_crops_then_over_models():
    # One image with two crops of constant value 1 and -1, a second image of 0.5 and 0.5.
    views = torch.empty(2, 2, 3, 4, 4)
    views[0, 0], views[0, 1], views[1, :] = 1.0, -1.0, 0.5
    models = [MeanLogits(1.0), MeanLogits(2.0)]
    p1 = crop_probabilities(models[0], views)
    expect0 = [(a + b) / 2 for a, b in zip(softmax3(1), softmax3(-1), strict=True)]
    assert torch.allclose(p1[0], torch.tensor(expect0), atol=1e-6)
    assert torch.allclose(p1[1], torch.tensor(softmax3(0.5)), atol=1e-6)

    labels = torch.tensor([1, 0])
    member, y = member_probabilities(models, [(views, labels)])
    both = ensemble_probabilities(member)
    expect_img1 = [(a + b) / 2 for a, b in zip(softmax3(0.5), softmax3(1.0), strict=True)]
    assert torch.allclose(both[1], torch.tensor(expect_img1), atol=1e-6)
    assert torch.equal(y, labels)
    # Image 0 is symmetric: classes 0 and 2 tie above class 1, so label 1 is a top-1 miss.
    assert topk_errors(both, labels, ks=(1, 3)) == {"top1_error": 0.5, "top3_error": 0.0}


def test_table3_grid_layout_costs_and_patterns():
    labels = torch.tensor([0, 1, 2, 0])
    good = torch.eye(3)[labels] * 0.9 + 0.1 / 3
    bad = torch.full((4, 3), 1 / 3) + torch.tensor([0.0, 0.0, 0.01])
    by_scheme = {
        "center": ([bad, good], labels, 1),
        "ten": ([good, good], labels, 10),
    }
    rows = table3_grid(by_scheme)
    assert [(r["models"], r["crops"], r["cost"]) for r in rows] == [
        (1, 1, 1),
        (1, 10, 10),
        (2, 1, 2),
        (2, 10, 20),
    ]
    first = rows[0]
    assert first["top1_error"] == 0.75  # `bad` always picks class 2: one hit in four
    assert rows[1]["top1_error"] == 0.0
    found = patterns(rows)
    assert found["crops"] == "holds" and found["models"] == "holds"
    worse = [dict(r) for r in rows]
    worse[3]["top1_error"] = 0.5
    assert found != patterns(worse)
    assert patterns(worse)["crops"].startswith("does not hold: 2 models: 1->10 crops")
