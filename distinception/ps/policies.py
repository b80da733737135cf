"""Staleness policies: what a shard does with a gradient computed on weights it has since changed.

*Staleness* is the number of versions a shard applied between the replica's pull and its push.
- `none`: apply everything (Downpour SGD, as in DistBelief and the paper);
- `scale`: divide the gradient by its staleness, so a stale gradient moves the weights less;
- `bound:k`: refuse pushes more than k versions stale (stale-synchronous parallel); the replica
  re-pulls and its work is counted as refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from distinception.config import parse_staleness


@dataclass(frozen=True)
class StalenessPolicy:
    kind: str
    bound: int = 0

    @classmethod
    def parse(cls, spec: str) -> StalenessPolicy:
        kind, bound = parse_staleness(spec)
        return cls(kind, bound)

    def decide(self, staleness: int) -> tuple[bool, float]:
        """(accept, gradient scale) for a push of the given staleness."""
        if self.kind == "bound" and staleness > self.bound:
            return False, 0.0
        if self.kind == "scale" and staleness > 1:
            return True, 1.0 / staleness
        return True, 1.0
