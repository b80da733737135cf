"""A parameter shard: one contiguous slice of the flat vector, its optimizer and its version.

Plain Python (no Ray) so the update rule is unit-tested directly; `shard_server.ShardServer`
serves it to replicas.
*Update* = one gradient applied; *version* = the number of updates applied so far.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distinception.config import OptimConfig, PSConfig, parse_momentum_correction
from distinception.ps.layout import ParamLayout
from distinception.ps.policies import (
    DelayCompensation,
    MomentumLoop,
    StalenessMeter,
    StalenessPolicy,
    explicit_momentum,
)
from distinception.ps.transport.shm import SharedVector

#: Reasons a push is refused; every refusal is counted under its reason and never applied.
#: "source": a same-node push named a shared-memory gradient that could not be read.
REFUSALS = ("layout", "length", "nonfinite", "stale", "restarted", "source")


@dataclass(frozen=True)
class PushResult:
    accepted: bool
    reason: str
    staleness: int
    version: int


def build_optimizer(
    params_decay: list[torch.nn.Parameter],
    params_plain: list[torch.nn.Parameter],
    optim: OptimConfig,
) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = []
    if params_decay:
        groups.append({"params": params_decay, "weight_decay": optim.weight_decay})
    if params_plain:
        groups.append({"params": params_plain, "weight_decay": 0.0})
    # Fused: one kernel per parameter for decay, momentum and update. Measured on a 26 MB slice
    # (one thread, SGD momentum 0.9, decay 2e-4): 2.3 ms against 5.5 ms for the default loop.
    if optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum, fused=True)
    if optim.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=optim.lr, fused=True)
    if optim.optimizer == "adam":
        return torch.optim.Adam(groups, lr=optim.lr, fused=True)
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr, fused=True)
    if optim.optimizer == "rmsprop":  # no fused kernel
        return torch.optim.RMSprop(groups, lr=optim.lr, momentum=optim.momentum)
    raise ValueError(f"optimizer={optim.optimizer!r}")


def lr_factor(examples: int, optim: OptimConfig, examples_per_epoch: int) -> float:
    """Linear warm-up over `warmup_examples`, then x`lr_decay` every `lr_decay_epochs` epochs."""
    warm = min(1.0, (examples + 1) / optim.warmup_examples) if optim.warmup_examples else 1.0
    period = max(1.0, optim.lr_decay_epochs * examples_per_epoch)
    return warm * optim.lr_decay ** math.floor(examples / period)


class ShardCore:
    def __init__(
        self,
        index: int,
        start: int,
        stop: int,
        layout: ParamLayout,
        init: np.ndarray | torch.Tensor,
        ps: PSConfig,
        optim: OptimConfig,
        examples_per_epoch: int,
        shared: SharedVector | None = None,
    ) -> None:
        """With `shared`, the weights live in that shared-memory vector (same-node replicas read
        them straight from there); each update is applied under its write lock, so a reader
        never copies a half-applied one, and its version is published with it."""
        if len(init) != stop - start:
            raise ValueError(f"shard {index}: init has {len(init)} values, range {stop - start}")
        self.index, self.start, self.stop = index, start, stop
        self.fingerprint = layout.fingerprint
        self.ps, self.optim = ps, optim
        self.policy = StalenessPolicy.parse(ps.staleness)
        self.examples_per_epoch = max(1, examples_per_epoch)
        values = torch.as_tensor(np.asarray(init, dtype=np.float32))
        self.shared = shared
        if shared is not None:
            if shared.numel != len(init):
                raise ValueError(f"shard {index}: shared vector has {shared.numel} values")
            self.flat = shared.values
            with shared.writing():
                self.flat.copy_(values)
                shared.version = 0
        else:
            self.flat = values.clone()
        self.grad = torch.zeros_like(self.flat)
        decay, plain = [], []
        self._pieces: list[tuple[torch.nn.Parameter, int, int]] = []
        # One Parameter per layout piece, each a view of the flat slice, so torch optimizers
        # update the slice in place and weight decay skips biases and normalisation terms.
        for a, b, use_decay in layout.decay_mask(start, stop):
            p = torch.nn.Parameter(torch.empty(0))
            p.data = self.flat[a:b]
            (decay if use_decay else plain).append(p)
            self._pieces.append((p, a, b))
        self._bound = -1
        self._bind(self.grad)
        self.optimizer = build_optimizer(decay, plain, optim)
        self.examples = 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda _: lr_factor(self.examples, self.optim, self.examples_per_epoch)
        )
        self.version = 0
        #: Which life of the shard actor this is (a new uuid at every restart; "" outside Ray).
        self.incarnation = ""
        # Async-aware updates: momentum lowered by the staleness measured here (by a fixed
        # share, or one the closed loop moves), and DC-ASGD's correction against the weights
        # each gradient was computed on.
        self.meter = StalenessMeter()
        kind, self.correction = parse_momentum_correction(ps.momentum_correction)
        has_momentum = "momentum" in self.optimizer.defaults
        self.loop: MomentumLoop | None = None
        if kind == "closed-loop" and has_momentum:
            decay = torch.zeros(self.size)
            for a, b, use_decay in layout.decay_mask(start, stop):
                decay[a:b] = optim.weight_decay if use_decay else 0.0
            # Sampled weights are small (16 KB a version), so keep versions well past the
            # staleness the replicas cause (pushes staler than that go unmeasured).
            self.loop = MomentumLoop(optim.momentum, 4 * ps.num_replicas + 4, decay, seed=index)
            self.loop.record(0, self.flat, self.lr)
        self.tune_momentum = has_momentum and (self.correction > 0 or self.loop is not None)
        self.dc: DelayCompensation | None = None
        if ps.dc_versions:
            self.dc = DelayCompensation(ps.delay_compensation, ps.dc_versions, ps.dc_adaptive)
            self.dc.record(0, self.flat)
        self.staleness_hist: Counter[int] = Counter()
        self.recent_hist: Counter[int] = Counter()
        self.refused: Counter[str] = Counter()
        self.clipped = 0

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def momentum(self) -> float:
        """The momentum in use (lowered from `optim.momentum` by `momentum_correction`)."""
        return float(self.optimizer.param_groups[0].get("momentum", 0.0))

    def apply(
        self,
        grad: torch.Tensor,
        base_version: int,
        *,
        examples: int,
        fingerprint: str,
        incarnation: str = "",
        borrow: bool = False,
    ) -> PushResult:
        """Validate, then apply one gradient slice computed on weights of `base_version`.

        `borrow`: the optimizer may read `grad` where it lies (a replica's shared-memory slot,
        which the replica leaves alone until this push is answered) instead of a copy."""
        staleness = max(0, self.version - base_version)
        reason, norm = "", 0.0
        if fingerprint != self.fingerprint:
            reason = "layout"
        elif grad.dim() != 1 or grad.numel() != self.size:
            reason = "length"
        elif incarnation != self.incarnation:
            reason = "restarted"
        else:
            # One pass gives both checks: the norm is NaN/inf if any element is, and inf when
            # the gradient is so large its squares overflow float32.
            norm = float(torch.linalg.vector_norm(grad))
            if not math.isfinite(norm):
                reason = "nonfinite"
        accept, scale = self.policy.decide(staleness) if not reason else (False, 0.0)
        if not reason and not accept:
            reason = "stale"
        if reason:
            return self.refuse(reason, base_version)
        clip = self.optim.clip_norm
        if clip > 0 and norm > clip:
            # Replicas clip the whole gradient to clip_norm, so an honest slice never exceeds
            # it; a larger one comes from a replica that did not, and is scaled down here.
            scale *= clip / norm
            self.clipped += 1
        if self.loop is not None:
            # Measured on the gradient as pushed: the step a synchronous update would have taken.
            measured = self.loop.measure(grad, base_version, self.momentum)
            if measured is not None:
                self.correction = self.loop.update(measured)
        if self.dc is not None:
            if grad.dtype != self.grad.dtype:  # a bf16 push: widen once, then correct in place
                self.grad.copy_(grad)
                grad = self.grad
            self.dc.compensate(grad, base_version, self.flat, out=self.grad)
            grad, borrow = self.grad, False
        if borrow and scale == 1.0:
            self._bind(grad)
        else:
            if grad.data_ptr() != self.grad.data_ptr():
                self.grad.copy_(grad)
            if scale != 1.0:
                self.grad.mul_(scale)
            self._bind(self.grad)
        self.meter.add(staleness)
        if self.tune_momentum:
            momentum = explicit_momentum(self.optim.momentum, self.meter.mean, self.correction)
            for group in self.optimizer.param_groups:
                group["momentum"] = momentum
        with self._writing():
            self.optimizer.step()
            self.version += 1
            self._publish()
        if self.dc is not None:
            self.dc.record(self.version, self.flat)
        if self.loop is not None:
            self.loop.record(self.version, self.flat, self.lr)
        self.examples += int(examples)
        self.scheduler.step()
        self.staleness_hist[staleness] += 1
        self.recent_hist[staleness] += 1
        return PushResult(True, "", staleness, self.version)

    def _bind(self, grad: torch.Tensor) -> None:
        """Point the optimizer's gradients at `grad` (when they are not there already)."""
        if grad.data_ptr() != self._bound:
            for p, a, b in self._pieces:
                p.grad = grad[a:b]
            self._bound = grad.data_ptr()

    def refuse(self, reason: str, base_version: int) -> PushResult:
        """Count a push refused for `reason` (one of REFUSALS); nothing is applied."""
        self.refused[reason] += 1
        return PushResult(False, reason, max(0, self.version - base_version), self.version)

    def _writing(self) -> contextlib.AbstractContextManager[Any]:
        return self.shared.writing() if self.shared is not None else contextlib.nullcontext()

    def _publish(self) -> None:
        if self.shared is not None:
            self.shared.version = self.version

    def stats(self, reset_recent: bool = True) -> dict[str, Any]:
        out = {
            "index": self.index,
            "version": self.version,
            "examples": self.examples,
            "lr": self.lr,
            "incarnation": self.incarnation,
            "refused": dict(self.refused),
            "clipped": self.clipped,
            "momentum": self.momentum,
            "momentum_share": self.correction,
            "mean_staleness": self.meter.mean,
            "dc_bytes": self.dc.nbytes if self.dc is not None else 0,
            "staleness_hist": dict(self.staleness_hist),
            "recent_hist": dict(self.recent_hist),
        }
        if self.loop is not None:
            out["momentum_total"] = self.loop.total.mean
        if reset_recent:
            self.recent_hist = Counter()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "start": self.start,
            "stop": self.stop,
            "fingerprint": self.fingerprint,
            "flat": self.flat.clone(),
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "version": self.version,
            "examples": self.examples,
            "staleness_hist": dict(self.staleness_hist),
            "refused": dict(self.refused),
            "meter": self.meter.state_dict(),
            "loop": self.loop.state_dict() if self.loop is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["start"], state["stop"], state["fingerprint"]) != (
            self.start,
            self.stop,
            self.fingerprint,
        ):
            raise ValueError(
                f"shard {self.index}: checkpoint covers [{state['start']}, {state['stop']}) of "
                f"layout {state['fingerprint']}, expected [{self.start}, {self.stop}) of "
                f"{self.fingerprint}"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad(), self._writing():
            self.flat.copy_(state["flat"])
            self.version = int(state["version"])
            self._publish()
        self.examples = int(state["examples"])
        self.staleness_hist = Counter({int(k): v for k, v in state["staleness_hist"].items()})
        self.refused = Counter(state["refused"])
        if "meter" in state:
            self.meter.load_state_dict(state["meter"])
        if self.dc is not None:
            self.dc.versions.clear()
            self.dc.record(self.version, self.flat)
        if self.loop is not None:
            if state.get("loop"):
                self.loop.load_state_dict(state["loop"])
                self.correction = self.loop.share
            self.loop.restart(self.version, self.flat, self.lr)


def histogram_mean(hist: dict[int, int]) -> float:
    """The mean of a {value: count} histogram (0 for an empty one); keys may be strings, as a
    histogram read back from JSON has them."""
    total = sum(hist.values())
    return sum(int(k) * v for k, v in hist.items()) / total if total else 0.0


def histogram_quantile(hist: dict[int, int], q: float) -> float:
    """The q-quantile of a {value: count} histogram (0 for an empty one)."""
    total = sum(hist.values())
    if not total:
        return 0.0
    target = q * (total - 1)
    seen = 0
    for value in sorted(hist):
        seen += hist[value]
        if seen > target:
            return float(value)
    return float(max(hist))
