"""Which classifier a job trains, by `model.arch`, and how it is described.

The parameter server never looks inside the model: it flattens whatever `nn.Module` this module
builds into one vector, so any classifier that maps an image batch to logits trains the same way.

Archs
    ``googlenet``               this project's GoogLeNet (`variant`, `width`, `aux`, dropouts).
    ``torchvision:NAME``        a torchvision classification builder, built with ``weights=None``
                                (nothing is downloaded) and the data's class count; `width`
                                becomes its ``width_mult`` (MobileNet) and must stay 1 otherwise.
    ``package.module:function`` a user's builder, called as ``function(num_classes=N)``; it must
                                be importable wherever the job's actors run.

The config checks the name (`ModelConfig`): a misspelt one fails before anything starts, with
the close matches. The GoogLeNet-only fields (`variant`, `aux`, `dropout`, `aux_dropout`) are
ignored for the other archs; the aux-loss weight applies wherever a model returns aux outputs
(`loss.classifier_loss`).
"""

from __future__ import annotations

import importlib

from torch import nn

from distinception.config import GOOGLENET, TORCHVISION, ConfigError, ModelConfig
from distinception.model.googlenet import build_googlenet

#: torchvision builders that warn unless told which random initialisation to use.
ASKS_FOR_INIT = frozenset({"googlenet", "inception_v3"})


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The classifier `cfg.arch` names, with `num_classes` outputs and random weights."""
    if cfg.arch == GOOGLENET:
        return build_googlenet(cfg, num_classes)
    source, _, name = cfg.arch.partition(":")
    if source == TORCHVISION:
        from torchvision.models import get_model

        # The config has checked that a width other than 1 is a width_mult this builder takes.
        options: dict[str, object] = {"width_mult": cfg.width} if cfg.width != 1.0 else {}
        if name in ASKS_FOR_INIT:
            # Their random init today, asked for by name: left unsaid, each build warns that
            # the default will change.
            options["init_weights"] = True
        return get_model(name, weights=None, num_classes=num_classes, **options)
    builder = getattr(importlib.import_module(source), name)
    try:
        model = builder(num_classes=num_classes)
    except TypeError as err:
        if "num_classes" not in str(err):
            raise
        raise ConfigError(
            f"model.arch={cfg.arch!r}: expected a builder taking num_classes= ({err})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model.arch={cfg.arch!r}: expected a builder returning a torch.nn.Module, got "
            f"{type(model).__name__}"
        )
    return model


def describe_model(cfg: ModelConfig) -> str:
    """The model in a few words, for run descriptions and benchmark tables."""
    if cfg.arch == GOOGLENET:
        return f"{cfg.variant} GoogLeNet at width {cfg.width:g}"
    width = f" at width {cfg.width:g}" if cfg.width != 1.0 else ""
    return f"{cfg.arch}{width}"


__all__ = ["build_model", "describe_model"]
