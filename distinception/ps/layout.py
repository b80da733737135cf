"""The flat parameter layout shared by shards, replicas and the averager.

Every trainable parameter lives in one contiguous fp32 vector and the model's parameters are views
into it, so a pull is one copy into that vector and the gradient is already flat. Shards own
contiguous ranges of the vector, cut to balance bytes rather than at parameter boundaries (one
large FC matrix would otherwise unbalance the shards).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from distinception.ps.transport import wire


@dataclass(frozen=True)
class ParamEntry:
    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int
    #: Weight decay applies to conv/linear weights only, never to biases or BN affine terms.
    decay: bool


@dataclass(frozen=True)
class ParamLayout:
    entries: tuple[ParamEntry, ...]
    total: int

    @classmethod
    def from_module(cls, model: nn.Module) -> ParamLayout:
        entries = []
        offset = 0
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            n = p.numel()
            entries.append(ParamEntry(name, tuple(p.shape), offset, n, p.dim() > 1))
            offset += n
        return cls(tuple(entries), offset)

    @property
    def fingerprint(self) -> str:
        """Identifies the layout so a push from a replica built differently is refused."""
        return wire.fingerprint((e.name, e.shape, e.offset) for e in self.entries)

    @property
    def nbytes(self) -> int:
        return self.total * 4

    def shard_ranges(self, num_shards: int) -> list[tuple[int, int]]:
        """Contiguous [start, stop) ranges of near-equal size covering the vector."""
        if not 1 <= num_shards <= self.total:
            raise ValueError(f"num_shards={num_shards}: expected 1..{self.total}")
        bounds = [round(i * self.total / num_shards) for i in range(num_shards + 1)]
        return list(itertools.pairwise(bounds))

    def decay_mask(self, start: int, stop: int) -> list[tuple[int, int, bool]]:
        """Pieces of [start, stop) as (local_start, local_stop, decay), one per parameter."""
        pieces = []
        for e in self.entries:
            a, b = max(start, e.offset), min(stop, e.offset + e.numel)
            if a < b:
                pieces.append((a - start, b - start, e.decay))
        return pieces


def flatten_module(
    model: nn.Module, layout: ParamLayout | None = None
) -> tuple[torch.Tensor, torch.Tensor, ParamLayout]:
    """Move `model`'s parameters and gradients into flat buffers; return (params, grads, layout).

    Parameters keep their identity (optimizers and hooks still see the same `nn.Parameter`), but
    their storage becomes a view of the flat vector, and `.grad` a view of the flat gradient, which
    autograd accumulates into in place as long as gradients are zeroed without being set to None.
    """
    layout = layout or ParamLayout.from_module(model)
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    flat = torch.empty(layout.total, dtype=torch.float32, device=device)
    grad = torch.zeros(layout.total, dtype=torch.float32, device=device)
    with torch.no_grad():
        for e in layout.entries:
            p = params[e.name]
            if tuple(p.shape) != e.shape:
                raise ValueError(f"parameter {e.name} has shape {tuple(p.shape)}, layout {e.shape}")
            view = flat[e.offset : e.offset + e.numel].view(e.shape)
            view.copy_(p.detach().float())
            p.data = view
    bind_gradients(model, layout, grad)
    return flat, grad, layout


def bind_gradients(model: nn.Module, layout: ParamLayout, grad: torch.Tensor) -> None:
    """Make every parameter's `.grad` a view of the flat `grad`, so backward accumulates there:
    a replica moves its gradient between shared-memory slots this way instead of copying it."""
    params = dict(model.named_parameters())
    for e in layout.entries:
        params[e.name].grad = grad[e.offset : e.offset + e.numel].view(e.shape)
