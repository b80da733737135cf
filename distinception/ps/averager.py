"""Polyak-averaged inference weights, kept off the replicas' path.

The averager samples the published weights on its own clock and folds them into
`torch.optim.swa_utils.AveragedModel`: a uniform (Polyak) average from `polyak_start` updates on,
or an exponential moving average. BatchNorm statistics of an average of weights are not the
average of statistics, so for the BN variant they are recomputed (`update_bn`) on training images
before every evaluation, for the raw weights too (replicas' running stats never leave them).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

from distinception.config import JobConfig
from distinception.evaluate import evaluate_model
from distinception.ps.replica import build_flat_model


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


class AveragerCore:
    def __init__(self, cfg: JobConfig, num_classes: int) -> None:
        self.cfg = cfg
        self.model, self.flat, _, self.layout = build_flat_model(cfg, num_classes)
        self.model.eval()
        if cfg.ps.polyak == "ema":
            self.averaged = AveragedModel(
                self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ps.ema_decay)
            )
        else:
            self.averaged = AveragedModel(self.model)
        self.version = -1
        self.samples = 0

    def observe(self, version: int, values: torch.Tensor) -> bool:
        """Take weights of a new (mean shard) `version`; fold them in once past the start."""
        if version == self.version:
            return False
        with torch.no_grad():
            self.flat.copy_(values)
        self.version = version
        if self.cfg.ps.polyak != "off" and version >= self.cfg.ps.polyak_start:
            self.averaged.update_parameters(self.model)
            self.samples += 1
        return True

    def averaged_module(self) -> torch.nn.Module:
        """The inference model: averaged weights, or raw ones before any sample was taken."""
        if self.samples == 0:
            return self.model
        return self.averaged.module

    def evaluate(
        self,
        val_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]],
        bn_batches: Callable[[], Iterable[torch.Tensor]] | None,
    ) -> dict[str, Any]:
        """Top-1/top-5 error of raw and averaged weights on the validation split."""
        out: dict[str, Any] = {"version": self.version, "polyak_samples": self.samples}
        for tag, module in (("raw", self.model), ("polyak", self.averaged_module())):
            scored = copy.deepcopy(module)
            if bn_batches is not None and has_batchnorm(scored):
                update_bn(bn_batches(), scored)
            res = evaluate_model(scored, val_batches())
            out[f"{tag}_top1_error"] = res["top1_error"]
            out[f"{tag}_top5_error"] = res["top5_error"]
            out["val_images"] = res["images"]
        return out

    def inference_model(
        self, bn_batches: Callable[[], Iterable[torch.Tensor]] | None
    ) -> torch.nn.Module:
        """A standalone copy of the averaged model, BN statistics recomputed, in eval mode."""
        module = copy.deepcopy(self.averaged_module())
        if bn_batches is not None and has_batchnorm(module):
            update_bn(bn_batches(), module)
        # Parameters of the copy are views of a flat buffer; give them their own storage so the
        # saved model is ordinary.
        with torch.no_grad():
            for p in module.parameters():
                p.data = p.data.clone()
        return module.eval()

    def state_dict(self) -> dict[str, Any]:
        return {
            "averaged": self.averaged.state_dict(),
            "version": self.version,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.version = int(state["version"])
        self.samples = int(state["samples"])
