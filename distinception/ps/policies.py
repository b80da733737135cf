"""Staleness policies: what a shard does with a gradient computed on weights it has since changed.

*Staleness* is the number of versions a shard applied between the replica's pull and its push.
- `none`: apply everything (Downpour SGD, as in DistBelief and the paper);
- `scale`: divide the gradient by its staleness, so a stale gradient moves the weights less;
- `bound:k`: refuse pushes more than k versions stale (stale-synchronous parallel); the replica
  re-pulls and its work is counted as refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

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


def implicit_momentum(staleness: float) -> float:
    """The momentum that asynchrony alone adds, from the mean staleness of applied updates.

    Mitliagkas et al. (2016, "Asynchrony begets momentum"): with M workers whose updates queue
    at one server, plain asynchronous SGD behaves in expectation like momentum SGD with momentum
    1 - 1/M. A gradient of mean staleness s was computed s updates ago, as it would be with
    M = s + 1 workers in that model, so the implicit momentum is s / (s + 1)."""
    s = max(0.0, float(staleness))
    return s / (s + 1.0)


def explicit_momentum(target: float, staleness: float, share: float = 1.0) -> float:
    """The optimizer momentum that keeps the total (explicit + implicit) at `target`.

    Explicit and implicit momentum add up (Mitliagkas et al. 2016, Section 4; Hadjis et al.
    2016 tune the explicit part down the same way), so a shard whose updates arrive with mean
    staleness s lowers its own momentum by s / (s + 1), never below 0. `share` < 1 takes off
    only that part of it: the full correction also shrinks the steady step lr / (1 - momentum),
    which some problems need and others train slower for (BENCHMARKS.md, "Async parity")."""
    return min(target, max(0.0, target - share * implicit_momentum(staleness)))


class StalenessMeter:
    """A running mean of the staleness of applied updates (exponential, bias-corrected), so the
    momentum a shard uses follows the staleness it sees now rather than its whole history (the
    closed loop keeps one of its measurements the same way)."""

    def __init__(self, decay: float = 0.98) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay={decay}: expected a number in [0, 1)")
        self.decay = decay
        self._sum = 0.0
        self._weight = 0.0

    def add(self, value: float) -> None:
        self._sum = self.decay * self._sum + (1 - self.decay) * value
        self._weight = self.decay * self._weight + (1 - self.decay)

    @property
    def mean(self) -> float:
        return self._sum / self._weight if self._weight else 0.0

    def state_dict(self) -> dict[str, float]:
        return {"sum": self._sum, "weight": self._weight}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._sum, self._weight = float(state["sum"]), float(state["weight"])


class DelayCompensation:
    """DC-ASGD (Zheng et al. 2017): correct a stale gradient with a cheap Taylor term.

    A gradient g computed on weights w_pulled is applied to weights w_now; its first-order
    correction uses the diagonal of the outer product g g^T as the Hessian's estimate:

        g_dc = g + lam * g * g * (w_now - w_pulled)

    The shard keeps the last `history` versions of its slice (memory: history x slice x 4
    bytes) to know w_pulled; a push staler than that is corrected against the oldest version
    kept (a partial correction, never a wrong one). With `adaptive`, lam is divided by the root
    of a running mean square of the gradient (their DC-ASGD-a, m = 0.95), which makes one lam
    fit layers and moments of training whose gradient scales differ."""

    def __init__(self, lam: float, history: int, adaptive: bool = True, m: float = 0.95) -> None:
        if lam <= 0 or history < 1:
            raise ValueError(f"lam={lam}, history={history}: expected lam > 0 and history >= 1")
        self.lam, self.history, self.adaptive, self.m = lam, history, adaptive, m
        self.versions: dict[int, torch.Tensor] = {}
        self._free: list[torch.Tensor] = []
        self.mean_square: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Memory held for past versions (and the running mean square)."""
        kept = sum(t.numel() * t.element_size() for t in self.versions.values())
        extra = 0 if self.mean_square is None else self.mean_square.numel() * 4
        return kept + extra

    def record(self, version: int, weights: torch.Tensor) -> None:
        """Keep a copy of the weights of `version`, dropping the oldest beyond `history`."""
        while len(self.versions) >= self.history:
            self._free.append(self.versions.pop(min(self.versions)))
        buf = self._free.pop() if self._free else torch.empty_like(weights)
        buf.copy_(weights)
        self.versions[version] = buf

    def compensate(
        self, grad: torch.Tensor, base_version: int, weights: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """`out` = the compensated gradient (`grad` may be `out`); returns `out`."""
        if self.adaptive:
            if self.mean_square is None:
                self.mean_square = grad.square()
            else:
                self.mean_square.mul_(self.m).addcmul_(grad, grad, value=1 - self.m)
        if out.data_ptr() != grad.data_ptr():
            out.copy_(grad)
        if not self.versions or base_version >= max(self.versions):
            return out  # computed on the newest weights kept: nothing to correct
        pulled = self.versions.get(base_version, self.versions[min(self.versions)])
        term = (weights - pulled).mul_(grad).mul_(grad)
        if self.adaptive:
            assert self.mean_square is not None
            term.div_(self.mean_square.sqrt().add_(1e-7))
        out.add_(term, alpha=self.lam)
        return out


class MomentumLoop:
    """Closed-loop momentum correction (Zhang & Mitliagkas 2017, "YellowFin and the art of
    momentum tuning", Section 4): measure the total momentum the shard's steps show and move the
    share of the correction until that total is the target.

    Why: no fixed share suits every model (half trained GoogLeNet on the built-in set best and
    let ResNet-18 swing on the digits), and s / (s + 1) is a queueing model's implicit momentum,
    not a measurement of what this model's steps show. The shard can measure that. Its step v
    was x_{v+1} - x_v = mu (x_v - x_{v-1}) - lr d_v, with d_v a stale gradient (plus
    decay). A gradient computed on x_v itself, which a replica pushes later, says what a
    synchronous step would have been, so

        mu_T = median over coordinates of (x_{v+1} - x_v + lr (g(x_v) + wd x_v)) / (x_v - x_{v-1})

    is the momentum that step showed, explicit and implicit together (the explicit one exactly,
    when the gradient was fresh). Each measurement moves the share by `gain` x (mu_T - target),
    kept in [0, 1], between no correction and the full one, from `start`. Only a fixed random
    sample of coordinates is kept per version: memory samples x history x 4 bytes."""

    def __init__(
        self,
        target: float,
        history: int,
        decay: torch.Tensor,
        samples: int = 4096,
        gain: float = 0.01,
        start: float = 1.0,
        seed: int = 0,
    ) -> None:
        if history < 2 or samples < 1 or gain <= 0 or not 0 <= start <= 1:
            raise ValueError(
                f"history={history}, samples={samples}, gain={gain}, start={start}: expected "
                "history >= 2, samples >= 1, gain > 0 and start in [0, 1]"
            )
        size = decay.numel()
        generator = torch.Generator().manual_seed(seed)
        self.index = torch.randperm(size, generator=generator)[: min(samples, size)].sort().values
        self.decay = decay[self.index].to(torch.float32)
        self.target, self.history, self.gain, self.share = target, history, gain, start
        self.versions: dict[int, torch.Tensor] = {}
        self.step_lr: dict[int, float] = {}
        self.measured = 0
        #: A running mean of the measurements (what the shard reports as the total momentum).
        self.total = StalenessMeter(decay=0.98)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.versions.values())

    def record(self, version: int, weights: torch.Tensor, lr: float) -> None:
        """Keep the sampled weights of `version`, reached by a step of learning rate `lr`."""
        while len(self.versions) >= self.history:
            oldest = min(self.versions)
            del self.versions[oldest]
            self.step_lr.pop(oldest - 1, None)
        self.versions[version] = weights[self.index].float()
        if version > 0:
            self.step_lr[version - 1] = lr

    def measure(self, grad: torch.Tensor, base_version: int, momentum: float) -> float | None:
        """The total momentum step `base_version` showed, from a gradient computed on its
        weights; `momentum` (the explicit one in use) when that step is the one about to be
        taken; None when the versions it needs are no longer kept."""
        v = base_version
        if v + 1 not in self.versions:
            return momentum if v == max(self.versions, default=v) else None
        if v - 1 not in self.versions:
            return None
        before, here, after = self.versions[v - 1], self.versions[v], self.versions[v + 1]
        g = grad[self.index].float() + self.decay * here
        num = after - here + self.step_lr[v] * g
        den = here - before
        moved = den != 0
        if not bool(moved.any()):
            return None
        return float((num[moved] / den[moved]).median())

    def update(self, measured: float) -> float:
        """Move the share by one measurement; returns the new share."""
        if math.isfinite(measured):
            self.share = min(1.0, max(0.0, self.share + self.gain * (measured - self.target)))
            self.measured += 1
            self.total.add(measured)
        return self.share

    def state_dict(self) -> dict[str, Any]:
        return {"share": self.share, "measured": self.measured, "total": self.total.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.share, self.measured = float(state["share"]), int(state["measured"])
        self.total.load_state_dict(state["total"])

    def restart(self, version: int, weights: torch.Tensor, lr: float) -> None:
        """Forget the versions kept (a restored shard's history is not the one they came from)
        and start again from `version`."""
        self.versions.clear()
        self.step_lr.clear()
        self.record(version, weights, lr)
