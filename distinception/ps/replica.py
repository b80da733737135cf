"""A model replica's compute: pull weights in, run forward/backward on its own data, hand out grads.

Plain Python (no Ray): `replica_loop.ReplicaLoop` adds the communication with shards around it.
The model's parameters are views of one flat vector, so loading a pull is one copy per shard and
the accumulated gradient is already the flat vector that is cut into per-shard slices.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from distinception.config import JobConfig, ModelConfig
from distinception.model.archs import build_model
from distinception.model.loss import classifier_loss
from distinception.ps.layout import ParamLayout, bind_gradients, flatten_module


def build_flat_model(
    model_cfg: ModelConfig, num_classes: int, seed: int | None = None
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, ParamLayout]:
    """The model every part of the system agrees on, with its flat parameter and grad buffers."""
    if seed is not None:
        torch.manual_seed(seed)
    model = build_model(model_cfg, num_classes)
    flat, grad, layout = flatten_module(model)
    return model, flat, grad, layout


def straggle(factor: float, compute_s: float) -> None:
    """Benchmark knob: make one step take `factor` times its compute time (`straggler`).

    Every system compared against the parameter server calls this same function after its
    step, so a straggler costs each of them the same."""
    if factor > 1.0:
        time.sleep((factor - 1.0) * compute_s)


def _landed() -> None:
    """`wait` of a gradient already on the host."""


class BatchPrefetcher:
    """Decodes and augments the next batch on a thread while the caller computes.

    Augmentation and dropout both draw from torch's global generator, and the stream re-seeds
    it for every batch (so a resumed stream yields the same tensors). `rng` is held by whichever
    side is drawing: the thread for one batch, the caller for its forward pass. The caller asks
    for the next batch right after its forward (`request`), so decoding runs during backward and
    communication, and neither side ever sees the other's random numbers. For a GPU replica
    (`pin`) the batch is put in page-locked memory on the thread as well.

    `position` and `skipped` describe the batches handed out, not the one being prepared, so a
    replica restarted from `position` continues exactly after the last batch it trained on.
    """

    def __init__(self, stream: Any, pin: bool = False) -> None:
        self.stream = stream
        self.pin = pin
        self.rng = threading.Lock()
        self.position: dict = stream.position()
        self.skipped = int(stream.skipped)
        self._it = iter(stream)
        self._wanted = threading.Semaphore(0)
        self._ready: queue.Queue[Any] = queue.Queue()
        self._outstanding = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.acquire()
            if self._closed:
                return
            try:
                with self.rng:
                    x, y = next(self._it)
                    item = (x, y, self.stream.position(), int(self.stream.skipped))
                if self.pin:  # for a GPU replica: its copy to the device is then asynchronous
                    item = (x.pin_memory(), y.pin_memory(), *item[2:])
            except BaseException as err:  # handed to the caller, raised on its thread
                self._ready.put(err)
                return
            self._ready.put(item)

    def request(self) -> None:
        """Start preparing one more batch (at most one is prepared ahead)."""
        if self._outstanding == 0:
            self._outstanding = 1
            self._wanted.release()

    def __iter__(self) -> BatchPrefetcher:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._error is not None:  # the thread has stopped: fail again rather than hang
            raise self._error
        self.request()
        item = self._ready.get()
        self._outstanding = 0
        if isinstance(item, BaseException):
            self._error = item
            raise item
        x, y, self.position, self.skipped = item
        return x, y

    def close(self) -> None:
        self._closed = True
        self._wanted.release()
        self._thread.join(timeout=30)


class ReplicaCore:
    """One replica's model over a flat weight vector and a flat gradient, and its steps.

    It reads only the model section and two numbers: the gradient clip norm (clipped here,
    before the push, as a single process clips before its step) and the compute precision.
    `for_job` takes them from a job's config."""

    def __init__(
        self,
        model: ModelConfig,
        num_classes: int,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        device: str = "cpu",
        *,
        clip_norm: float = 0.0,
        compute_dtype: str = "float32",
    ) -> None:
        self.device = torch.device(device)
        self.model, _, _, _ = build_flat_model(model, num_classes)
        self.model = self.model.to(self.device)
        self.flat, self.grad, self.layout = flatten_module(self.model)
        self.model.train()
        self.aux_weight = model.aux_weight
        self.clip_norm = clip_norm
        self.autocast = compute_dtype == "bfloat16"
        self.batches = batches
        self.accumulated = 0
        self.examples = 0

    @classmethod
    def for_job(
        cls,
        cfg: JobConfig,
        num_classes: int,
        batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
        device: str = "cpu",
    ) -> ReplicaCore:
        """The replica of job `cfg`: its model, its optimizer's clip norm, its precision."""
        return cls(
            cfg.model,
            num_classes,
            batches,
            device,
            clip_norm=cfg.optim.clip_norm,
            compute_dtype=cfg.transport.compute_dtype,
        )

    def load_slice(self, start: int, stop: int, values: torch.Tensor) -> None:
        """Copy pulled weights (fp32 or bf16) into the flat vector the model's parameters view.

        Pulled fp32 arrays live in the object store's pageable memory; for a GPU they go through
        a page-locked copy first, which an H100 measured at 3.3 ms for 27 MB against 5.3 ms
        straight from pageable memory (bf16, half the bytes, was faster without: 1.0 ms)."""
        if self.device.type == "cuda" and values.dtype == torch.float32 and not values.is_pinned():
            staged = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            staged.copy_(values)
            values = staged  # the host allocator keeps it until the copy below has run
        with torch.no_grad():
            self.flat[start:stop].copy_(values, non_blocking=True)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.batches)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def compute(
        self,
        batch: tuple[torch.Tensor, torch.Tensor],
        rng: threading.Lock | None = None,
        after_forward: Callable[[], None] | None = None,
    ) -> torch.Tensor:
        """Forward/backward one batch, accumulating into the flat gradient; returns the loss as
        a 0-d tensor on the device, so a GPU is never made to wait for the host to read it.

        `rng` is held during the forward (the only part that draws random numbers: dropout);
        `after_forward` runs between forward and backward (a prefetcher's `request`)."""
        x, y = batch
        with (
            rng if rng is not None else contextlib.nullcontext(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast),
        ):
            outputs = self.model(x)
            loss = classifier_loss(outputs, y, aux_weight=self.aux_weight)
        if after_forward is not None:
            after_forward()
        loss.backward()
        self.accumulated += 1
        self.examples += int(y.shape[0])
        return loss.detach()

    def move_gradient(self, buffer: torch.Tensor) -> None:
        """Accumulate into `buffer` (a shared-memory slot) from now on, keeping what is there."""
        buffer.copy_(self.grad)
        bind_gradients(self.model, self.layout, buffer)
        self.grad = buffer

    def take_gradient(
        self, swap: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int, Callable[[], None]]:
        """The mean gradient over the accumulated batches (clipped if configured), then zeroed.

        Returns (gradient on the host, examples, wait). On a CPU with `swap` (a free
        shared-memory slot), the buffer backward accumulated into is handed out as it is and
        accumulation moves on to `swap`, zeroed: the gradient is never copied. On a GPU the copy
        to the host runs asynchronously, so the next step's kernels queue behind it without the
        host waiting; `wait` blocks until the copy has landed and must be called before the
        tensor is read (the replica's communication thread does). On a CPU it returns at once."""
        n = max(1, self.accumulated)
        if n > 1:
            self.grad.div_(n)
        if self.clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        wait: Callable[[], None] = _landed
        if self.device.type == "cuda":
            # Into page-locked memory: a DMA copy ~50x faster than into pageable memory (measured
            # on an H100, 27 MB: 1 ms against 50 ms); torch's host allocator recycles the blocks.
            out = torch.empty(self.grad.shape, dtype=self.grad.dtype, pin_memory=True)
            out.copy_(self.grad, non_blocking=True)
            copied = torch.cuda.Event()
            copied.record()
            wait = copied.synchronize
            self.grad.zero_()
        elif swap is not None:
            out = self.grad
            swap.zero_()
            bind_gradients(self.model, self.layout, swap)
            self.grad = swap
        else:
            out = self.grad.detach().clone()
            self.grad.zero_()
        examples, self.examples, self.accumulated = self.examples, 0, 0
        return out, examples, wait
