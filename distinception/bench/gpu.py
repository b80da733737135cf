"""`distinception bench gpu` (also `python -m distinception.bench.gpu`): one replica's compute
on a GPU against a plain local torch loop on the same GPU. Pure torch, no Ray, so it runs on a
machine that has only torch (2.11+) and the repository.

Both train the faithful GoogLeNet at 224 px in bf16 autocast on synthetic images already on the
GPU (the data path is measured separately, on CPU). The local loop is what a user writes, SGD
with momentum on the GPU, timed twice: model and inputs in the default memory format, and both in
channels-last; the ratio is taken against the faster. The replica runs its own step as
configured with `transport.compute_dtype=bfloat16`: it loads new weights from pageable host
memory (the pull, as out of the object store), its flat-buffer model computes the gradient,
and the gradient is copied to host memory (the push, awaited one step later as the
communication thread does); the optimizer runs on the shards, which are not part of this
measurement. Model FLOP utilisation counts
1.583 G multiply-adds per image forward (the paper's model at 224 px), x2 FLOPs per
multiply-add and x3 for forward plus backward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from distinception.config import JobConfig, ModelConfig, TransportConfig
from distinception.model.archs import build_model
from distinception.model.loss import classifier_loss
from distinception.ps import ReplicaCore

FORWARD_MACS = 1.583e9
TRAIN_FLOPS_PER_IMAGE = FORWARD_MACS * 2 * 3
#: Dense bf16 tensor-core peaks, FLOP/s, by device name.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _timed(step, steps: int, warmup: int, dev: torch.device) -> float:
    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t


def _local_seconds(
    cfg: ModelConfig, x, y, steps: int, warmup: int, dev: torch.device, channels_last: bool
) -> float:
    model = build_model(cfg, 1000).to(dev).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = classifier_loss(model(x), y, aux_weight=cfg.aux_weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)

    return _timed(step, steps, warmup, dev)


def _replica_seconds(cfg: JobConfig, x, y, steps: int, warmup: int, dev: torch.device) -> float:
    core = ReplicaCore.for_job(cfg, 1000, iter(()), device=dev.type)
    host = core.flat.detach().cpu()  # pageable, as a pull out of the object store is

    landed: list = []

    def step() -> None:
        core.load_slice(0, core.layout.total, host)
        core.compute((x, y))
        _, _, wait = core.take_gradient()
        # As the replica's communication thread does, one step behind: wait for the previous
        # gradient to land on the host while this step's kernels are queued.
        if landed:
            landed.pop()()
        landed.append(wait)

    return _timed(step, steps, warmup, dev)


def run_gpu(
    batch: int = 64, steps: int = 30, warmup: int = 5, size: int = 224, device: str = "cuda"
) -> dict[str, Any]:
    """Images/s and MFU of both loops; `device="cpu"` only checks that the code runs."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("distinception bench gpu: no CUDA device here")
    torch.backends.cudnn.benchmark = True
    model_cfg = ModelConfig(variant="faithful", width=1.0, input_size=size)
    cfg = JobConfig(model=model_cfg, transport=TransportConfig(compute_dtype="bfloat16"))
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 1000, (batch,), device=dev)
    local_nchw_s = _local_seconds(model_cfg, x, y, steps, warmup, dev, channels_last=False)
    local_cl_s = _local_seconds(model_cfg, x, y, steps, warmup, dev, channels_last=True)
    local_s = min(local_nchw_s, local_cl_s)
    replica_s = _replica_seconds(cfg, x, y, steps, warmup, dev)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    peak = peak_flops(name)
    out: dict[str, Any] = {
        "device": name,
        "torch": torch.__version__,
        "batch": batch,
        "steps": steps,
        "size": size,
        "local_nchw_img_s": batch * steps / local_nchw_s,
        "local_channels_last_img_s": batch * steps / local_cl_s,
        "local_img_s": batch * steps / local_s,
        "replica_img_s": batch * steps / replica_s,
    }
    out["replica_vs_local"] = out["replica_img_s"] / out["local_img_s"]
    # Multiply-adds grow with the pixel count (the few FC layers aside): exact at 224 px.
    per_image = TRAIN_FLOPS_PER_IMAGE * (size / 224) ** 2
    for k in ("local", "replica"):
        tflops = out[f"{k}_img_s"] * per_image / 1e12
        out[f"{k}_tflops"] = tflops
        out[f"{k}_mfu"] = tflops * 1e12 / peak if peak else None
    return out


def format_gpu(r: dict[str, Any]) -> str:
    def mfu(v: float | None) -> str:
        return f"{v:.1%}" if v is not None else "n/a (unknown peak)"

    return "\n".join(
        [
            f"Device: {r['device']}, torch {r['torch']}; faithful GoogLeNet @{r['size']} px, "
            f"batch {r['batch']}, bf16 autocast, {r['steps']} timed steps.",
            "",
            f"Local loop: {r['local_nchw_img_s']:.0f} images/s in the default memory format, "
            f"{r['local_channels_last_img_s']:.0f} in channels-last; the faster is the baseline.",
            "",
            "| loop | images/s | model TFLOP/s | MFU |",
            "|---|---:|---:|---:|",
            f"| local torch loop (faster format) | {r['local_img_s']:.0f} | "
            f"{r['local_tflops']:.1f} | {mfu(r['local_mfu'])} |",
            f"| replica (flat buffers, pull + push copies) | {r['replica_img_s']:.0f} | "
            f"{r['replica_tflops']:.1f} | {mfu(r['replica_mfu'])} |",
            "",
            f"Replica / local: {r['replica_vs_local']:.2f}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cuda", help="cpu only checks that it runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = run_gpu(batch=args.batch, steps=args.steps, size=args.size, device=args.device)
    print(json.dumps(r, indent=2) if args.json else format_gpu(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
