"""The Ray docs' parameter server, written from its description, as the baseline a Ray user
would otherwise use: one PS actor holds the model and hands out its `state_dict()` by value;
workers compute a gradient on the weights they are given and return it as a list of arrays;
the driver routes every gradient (asynchronously: `ray.wait` for any worker, apply, send that
worker the new weights). Model, data, loss and optimizer are ours, so only the plumbing differs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
import torch

from distinception.bench.common import LocalTrainer, open_stream
from distinception.config import JobConfig
from distinception.model.archs import build_model
from distinception.ps import RPC_TIMEOUT_S, build_optimizer, lr_factor, straggle


class DocsParameterServer:
    """A plain torch model and optimizer in one actor, as in the docs (our optimizer groups and
    schedule: weight decay on conv/linear weights only, the rate decayed by examples seen)."""

    def __init__(self, cfg: JobConfig, num_classes: int, examples_per_epoch: int) -> None:
        torch.set_num_threads(1)
        if cfg.run.seed is not None:
            torch.manual_seed(cfg.run.seed)  # the same initial weights as every other system
        self.cfg = cfg
        self.model = build_model(cfg.model, num_classes)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            [p for p in self.params if p.dim() > 1],
            [p for p in self.params if p.dim() <= 1],
            cfg.optim,
        )
        self.seen = 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda _: lr_factor(self.seen, cfg.optim, examples_per_epoch)
        )

    def apply_gradients(self, *gradients: list[np.ndarray]) -> dict[str, torch.Tensor]:
        for i, p in enumerate(self.params):
            p.grad = torch.from_numpy(np.sum([g[i] for g in gradients], axis=0))
        self.optimizer.step()
        self.seen += self.cfg.data.batch_size * len(gradients)
        self.scheduler.step()
        return self.get_weights()

    def get_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.model.state_dict().items()}

    def flat(self) -> torch.Tensor:
        """The weights in the flat layout's order, to be scored like the other systems'."""
        return torch.cat([p.detach().reshape(-1) for p in self.params])


class DocsWorker:
    def __init__(
        self,
        cfg: JobConfig,
        data: str,
        num_classes: int,
        index: int,
        workers: int,
    ) -> None:
        torch.set_num_threads(1)
        self.trainer = LocalTrainer(cfg, num_classes, open_stream(cfg, data, index, workers))
        self.slow = 1.0

    def set_straggler(self, factor: float) -> None:
        self.slow = factor

    def compute_gradients(self, weights: dict[str, torch.Tensor]) -> list[np.ndarray]:
        core = self.trainer.core
        core.model.load_state_dict(weights)
        t = time.perf_counter()
        core.compute(core.next_batch())
        straggle(self.slow, time.perf_counter() - t)
        grads = [p.grad.detach().numpy().copy() for p in core.model.parameters()]
        core.grad.zero_()
        core.examples = core.accumulated = 0
        return grads


def run_docs_pattern(
    cfg: JobConfig,
    data: str,
    num_classes: int,
    workers: int,
    *,
    seconds: float = 0.0,
    examples: int = 0,
    worker_cpus: float = 0.75,
    ps_cpus: float = 0.25,
    examples_per_epoch: int = 5000,
    stragglers: Sequence[float] = (1.0,),
) -> list[dict[str, Any]]:
    """Train until `seconds` pass or `examples` are used, once per factor in `stragglers`
    (worker 0 slowed by it), one phase after another on the same actors; each phase's rates
    exclude its first round (every worker's first gradient of the phase).

    Returns, per phase, images/s and updates/s and the weights at its end as a flat vector
    (for scoring)."""
    ps = (
        ray.remote(DocsParameterServer)
        .options(num_cpus=ps_cpus)
        .remote(cfg, num_classes, examples_per_epoch)
    )
    actors = [
        ray.remote(DocsWorker)
        .options(num_cpus=worker_cpus)
        .remote(cfg, data, num_classes, i, workers)
        for i in range(workers)
    ]
    try:
        weights = ps.get_weights.remote()
        phases = []
        for factor in stragglers:
            # An actor runs one call at a time, in order: gradients still in flight from the
            # last phase finish first, and their results are dropped.
            ray.get(actors[0].set_straggler.remote(factor), timeout=RPC_TIMEOUT_S)
            phase, weights = _phase(ps, actors, weights, seconds, examples, cfg.data.batch_size)
            phases.append(phase)
        return phases
    finally:
        for a in [ps, *actors]:
            ray.kill(a)


def _phase(
    ps: Any, actors: list[Any], weights: Any, seconds: float, examples: int, batch: int
) -> tuple[dict[str, Any], Any]:
    """One timed phase of the docs' loop: `ray.wait` for any worker's gradient, apply it, send
    that worker the new weights. Returns the phase's rates and the newest weights."""
    pending = {w.compute_gradients.remote(weights): w for w in actors}
    applied, t0 = 0, None
    while True:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=RPC_TIMEOUT_S)
        if not ready:
            raise TimeoutError("docs pattern: no gradient within the RPC timeout")
        worker = pending.pop(ready[0])
        weights = ps.apply_gradients.remote(ready[0])
        applied += 1
        if applied == len(actors):  # every worker has started: the clock starts now
            ray.get(weights, timeout=RPC_TIMEOUT_S)
            t0, counted = time.perf_counter(), applied
        done = t0 is not None and (
            (seconds and time.perf_counter() - t0 >= seconds)
            or (examples and applied * batch >= examples)
        )
        if done:
            break
        pending[worker.compute_gradients.remote(weights)] = worker
    ray.get(weights, timeout=RPC_TIMEOUT_S)
    wall = time.perf_counter() - t0
    flat = ray.get(ps.flat.remote(), timeout=RPC_TIMEOUT_S)
    n = applied - counted
    return {
        "images_per_s": n * batch / wall,
        "updates_per_s": n / wall,
        "examples": applied * batch,
        "seconds": wall,
        "flat": flat,
    }, weights
