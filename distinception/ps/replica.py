"""A model replica's compute: pull weights in, run forward/backward on its own data, hand out grads.

Plain Python (no Ray): `actors.ReplicaActor` adds the communication with shards around it.
The model's parameters are views of one flat vector, so loading a pull is one copy per shard and
the accumulated gradient is already the flat vector that is cut into per-shard slices.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import torch

from distinception.config import JobConfig
from distinception.model.googlenet import build_model
from distinception.model.loss import googlenet_loss
from distinception.ps.layout import ParamLayout, flatten_module


def build_flat_model(
    cfg: JobConfig, num_classes: int, seed: int | None = None
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, ParamLayout]:
    """The model every part of the system agrees on, with its flat parameter and grad buffers."""
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(cfg.model, num_classes)
    flat, grad, layout = flatten_module(model)
    return model, flat, grad, layout


def to_wire(t: torch.Tensor, dtype: str) -> np.ndarray:
    """Gradient/weight slice as a numpy array for the object store; bf16 travels as raw int16."""
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy()
    return t.numpy()


def from_wire(a: np.ndarray) -> torch.Tensor:
    """A tensor over the received buffer, without a copy: callers only read it."""
    with warnings.catch_warnings():
        # Object-store buffers are read-only; torch warns but reading them is safe.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.asarray(a))
    if t.dtype == torch.int16:
        return t.view(torch.bfloat16).float()
    return t


class ReplicaCore:
    def __init__(
        self,
        cfg: JobConfig,
        num_classes: int,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        device: str = "cpu",
    ) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        model, _, _, _ = build_flat_model(cfg, num_classes)
        self.model = model.to(self.device)
        self.flat, self.grad, self.layout = flatten_module(self.model)
        self.model.train()
        self.batches = batches
        self.accumulated = 0
        self.examples = 0

    def load_slice(self, start: int, stop: int, values: torch.Tensor) -> None:
        with torch.no_grad():
            self.flat[start:stop].copy_(values, non_blocking=True)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def compute(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
        """Forward/backward one batch, accumulating into the flat gradient; returns the loss."""
        x, y = batch
        outputs = self.model(x)
        loss = googlenet_loss(outputs, y, aux_weight=self.cfg.model.aux_weight)
        loss.backward()
        self.accumulated += 1
        self.examples += int(y.shape[0])
        return float(loss.detach())

    def take_gradient(self) -> tuple[torch.Tensor, int]:
        """The mean gradient over the accumulated batches (clipped if configured), then zeroed."""
        n = max(1, self.accumulated)
        if n > 1:
            self.grad.div_(n)
        if self.cfg.ps.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.ps.clip_norm)
        out = self.grad.detach().to("cpu", copy=True)
        self.grad.zero_()
        examples, self.examples, self.accumulated = self.examples, 0, 0
        return out, examples
