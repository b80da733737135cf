"""What travels between a replica and a shard, whichever channel carries it.

Kept apart from both channels so the two encode and decode the same way: a weight or gradient
slice as a numpy array (bf16 as raw int16, which the object store carries as plain bytes), the
fields of a push, and the fingerprint that ties a push to the layout it was computed for.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch


def to_wire(t: torch.Tensor, dtype: str) -> np.ndarray:
    """Gradient/weight slice as a numpy array for the object store; bf16 travels as raw int16."""
    if dtype == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy()
    return t.numpy()


def from_wire(a: np.ndarray, widen: bool = True) -> torch.Tensor:
    """A tensor over the received buffer, without a copy: callers only read it.

    bf16 is widened to fp32 (one pass) unless `widen` is off, for a caller that copies it into
    an fp32 buffer anyway (`copy_` converts on the way)."""
    with warnings.catch_warnings():
        # Object-store buffers are read-only; torch warns but reading them is safe.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(np.asarray(a))
    if t.dtype == torch.int16:
        t = t.view(torch.bfloat16)
        return t.float() if widen else t
    return t


def fingerprint(entries: Iterable[tuple[str, Any, int]]) -> str:
    """Identifies a layout from its (name, shape, offset) entries, so a push from a replica
    built differently is refused rather than applied to the wrong parameters."""
    h = hashlib.sha1()
    for name, shape, offset in entries:
        h.update(f"{name}:{shape}:{offset};".encode())
    return h.hexdigest()[:16]


class PushRequest(NamedTuple):
    """A same-node push: the gradient lies in the shared-memory slot `path`; the rest tags it
    as a Ray push is tagged (the versions it was computed from, its examples, its layout and
    the shard incarnation it was meant for)."""

    path: str
    version: int
    examples: int
    fingerprint: str
    incarnation: str

    def message(self) -> dict[str, Any]:
        """The request as a doorbell message (a JSON object)."""
        return self._asdict()

    @classmethod
    def parse(cls, message: dict[str, Any]) -> PushRequest | None:
        """The request in a doorbell message, or None for one that is not a push of ours."""
        try:
            return cls(
                str(message["path"]),
                int(message["version"]),
                int(message["examples"]),
                str(message["fingerprint"]),
                str(message["incarnation"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
