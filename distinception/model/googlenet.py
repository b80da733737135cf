"""GoogLeNet ("Going deeper with convolutions", Szegedy et al. 2014), built from Table 1.

The file has the usual model-file shape: the tables (`INCEPTION_TABLE` mirrors Table 1 row by
row, `STAGES` groups the rows between stride-2 max pools, `VARIANTS` names every deviation from
the paper), the blocks (`ConvUnit`, `Inception`, `AuxHead`), the model and the builder.

Variants
    ``faithful``  the paper as the BVLC Caffe reproduction pins it down: biased convolutions +
                  ReLU, LRN in the stem, true 5x5 branches, dropout 0.4, two auxiliary heads,
                  Caffe's Xavier (fan-in) init with biases 0.2 and classifier biases 0.
    ``bn``        BatchNorm after every convolution (conv bias off) and no LRN; everything else
                  the same, 5x5 kernels included. Not the paper; it trains far more easily.

Input size
    Any input from 32 px works. Stride-2 max pools round up (Caffe's rule, ``ceil_mode=True``),
    which gives 112/56/28/14/7 at 224. The final pool is adaptive to 1x1, which at 224 is the
    paper's 7x7/1 average pool.

    The auxiliary heads use the paper's 5x5/3 average pool whenever it yields exactly 4x4, i.e.
    on 14x14 to 16x16 maps (inputs of 223 to 270 px), and adaptive average pooling to 4x4
    otherwise. Either way their first FC layer sees 128*width*16 features, so parameter names
    and shapes never depend on the input size; the choice is made from the map size on every
    forward pass, so one model serves every resolution.

Width
    `width` multiplies every channel count (stem, every Inception branch, the aux heads' 128 and
    1024), rounding to the nearest integer and keeping at least one channel.

Outputs
    In training mode with aux heads built, `forward` returns `GoogLeNetOutputs(logits, aux1,
    aux2)`; otherwise (eval mode, or ``aux=False``) it returns the logits tensor. With
    ``aux=False`` the heads are not built at all, so their parameters never reach a
    parameter server or an optimizer.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from distinception.config import ModelConfig


@dataclass(frozen=True)
class InceptionSpec:
    """One row of Table 1: the output channels of each branch of an Inception module."""

    name: str
    n1x1: int
    n3x3red: int
    n3x3: int
    n5x5red: int
    n5x5: int
    pool_proj: int

    @property
    def out_channels(self) -> int:
        return self.n1x1 + self.n3x3 + self.n5x5 + self.pool_proj

    def scaled(self, width: float) -> InceptionSpec:
        return dataclasses.replace(
            self,
            n1x1=scale_channels(self.n1x1, width),
            n3x3red=scale_channels(self.n3x3red, width),
            n3x3=scale_channels(self.n3x3, width),
            n5x5red=scale_channels(self.n5x5red, width),
            n5x5=scale_channels(self.n5x5, width),
            pool_proj=scale_channels(self.pool_proj, width),
        )


@dataclass(frozen=True)
class StemSpec:
    """The layers before the first Inception module (Table 1 rows conv1 and conv2)."""

    conv1: int = 64
    conv2red: int = 64
    conv2: int = 192


@dataclass(frozen=True)
class AuxSpec:
    """The auxiliary classifiers of Section 5: where they attach and how wide they are."""

    attach_to: tuple[str, ...] = ("4a", "4d")
    conv: int = 128
    fc: int = 1024
    pooled_hw: int = 4


@dataclass(frozen=True)
class VariantSpec:
    """A named build of the network; anything that departs from the paper is a field here."""

    name: str
    batch_norm: bool
    lrn: bool
    description: str


INCEPTION_TABLE: tuple[InceptionSpec, ...] = (
    InceptionSpec("3a", 64, 96, 128, 16, 32, 32),
    InceptionSpec("3b", 128, 128, 192, 32, 96, 64),
    InceptionSpec("4a", 192, 96, 208, 16, 48, 64),
    InceptionSpec("4b", 160, 112, 224, 24, 64, 64),
    InceptionSpec("4c", 128, 128, 256, 24, 64, 64),
    InceptionSpec("4d", 112, 144, 288, 32, 64, 64),
    InceptionSpec("4e", 256, 160, 320, 32, 128, 128),
    InceptionSpec("5a", 256, 160, 320, 32, 128, 128),
    InceptionSpec("5b", 384, 192, 384, 48, 128, 128),
)

#: Inception rows grouped by resolution; a 3x3/2 max pool sits between consecutive stages.
STAGES: tuple[tuple[str, ...], ...] = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))

STEM = StemSpec()
AUX = AuxSpec()

VARIANTS: dict[str, VariantSpec] = {
    "faithful": VariantSpec(
        "faithful", batch_norm=False, lrn=True, description="the paper: biased convs, ReLU, LRN"
    ),
    "bn": VariantSpec(
        "bn", batch_norm=True, lrn=False, description="BatchNorm after every conv, no LRN"
    ),
}


def scale_channels(channels: int, width: float) -> int:
    """Nearest integer (Python's round, ties to even), never below one so no branch vanishes."""
    return max(1, round(channels * width))


def _lrn() -> nn.Module:
    # Caffe's constants (the paper gives none); torch divides alpha by size, as Caffe does.
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)


def _max_pool_2x() -> nn.MaxPool2d:
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


class GoogLeNetOutputs(NamedTuple):
    logits: torch.Tensor
    aux1: torch.Tensor
    aux2: torch.Tensor


class ConvUnit(nn.Module):
    """conv -> (BatchNorm) -> ReLU, the one layer shape every convolution in GoogLeNet takes."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, bias=not batch_norm
        )
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        # In place is safe: the conv/BN output feeds only this ReLU, and neither backward needs it.
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.relu(x)


class Inception(nn.Module):
    """Four branches on the same input, concatenated on channels; every branch keeps H x W."""

    def __init__(self, in_channels: int, spec: InceptionSpec, *, batch_norm: bool) -> None:
        super().__init__()
        self.spec = spec
        self.conv1x1 = ConvUnit(in_channels, spec.n1x1, 1, batch_norm=batch_norm)
        self.conv3x3_reduce = ConvUnit(in_channels, spec.n3x3red, 1, batch_norm=batch_norm)
        self.conv3x3 = ConvUnit(spec.n3x3red, spec.n3x3, 3, padding=1, batch_norm=batch_norm)
        self.conv5x5_reduce = ConvUnit(in_channels, spec.n5x5red, 1, batch_norm=batch_norm)
        self.conv5x5 = ConvUnit(spec.n5x5red, spec.n5x5, 5, padding=2, batch_norm=batch_norm)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.pool_proj = ConvUnit(in_channels, spec.pool_proj, 1, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x C_in x H x W
        b1 = self.conv1x1(x)  # N x n1x1 x H x W
        b2 = self.conv3x3(self.conv3x3_reduce(x))  # N x n3x3 x H x W
        b3 = self.conv5x5(self.conv5x5_reduce(x))  # N x n5x5 x H x W
        b4 = self.pool_proj(self.pool(x))  # N x pool_proj x H x W
        return torch.cat((b1, b2, b3, b4), dim=1)  # N x out_channels x H x W


class AuxPool(nn.Module):
    """The aux heads' pooling: the paper's 5x5/3 average where it gives 4x4, adaptive elsewhere."""

    def __init__(self, out_hw: int = AUX.pooled_hw) -> None:
        super().__init__()
        self.out_hw = out_hw

    def uses_paper_pool(self, h: int, w: int) -> bool:
        return all(size >= 5 and (size - 5) // 3 + 1 == self.out_hw for size in (h, w))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uses_paper_pool(x.shape[-2], x.shape[-1]):
            return F.avg_pool2d(x, kernel_size=5, stride=3)
        return F.adaptive_avg_pool2d(x, self.out_hw)


class AuxHead(nn.Module):
    """Auxiliary classifier (Section 5): pool -> 1x1 conv -> FC + ReLU -> dropout -> linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        width: float,
        batch_norm: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        conv_channels = scale_channels(AUX.conv, width)
        fc_channels = scale_channels(AUX.fc, width)
        self.pool = AuxPool()
        self.conv = ConvUnit(in_channels, conv_channels, 1, batch_norm=batch_norm)
        self.fc = nn.Linear(conv_channels * AUX.pooled_hw**2, fc_channels)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(fc_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: N x 512 x 14 x 14 (after 4a) or N x 528 x 14 x 14 (after 4d)
        x = self.pool(x)  # N x C x 4 x 4
        x = self.conv(x)  # N x 128 x 4 x 4
        x = torch.flatten(x, 1)  # N x 2048
        x = self.relu(self.fc(x))  # N x 1024
        x = self.dropout(x)
        return self.classifier(x)  # N x num_classes


class GoogLeNet(nn.Module):
    """GoogLeNet built from `INCEPTION_TABLE`; see the module docstring for variants and sizes."""

    def __init__(
        self,
        num_classes: int = 1000,
        *,
        variant: str = "faithful",
        width: float = 1.0,
        aux: bool = True,
        dropout: float = 0.4,
        aux_dropout: float = 0.7,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r}: expected one of {', '.join(VARIANTS)}")
        if not (math.isfinite(width) and width > 0):
            raise ValueError(f"width={width!r}: expected a finite number > 0")
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes!r}: expected an integer >= 1")
        spec = VARIANTS[variant]
        bn = spec.batch_norm
        self.variant = variant
        self.width = width
        self.num_classes = num_classes
        self.has_aux = aux

        c1 = scale_channels(STEM.conv1, width)
        c2red = scale_channels(STEM.conv2red, width)
        c2 = scale_channels(STEM.conv2, width)
        self.conv1 = ConvUnit(3, c1, 7, stride=2, padding=3, batch_norm=bn)
        self.pool1 = _max_pool_2x()
        self.norm1 = _lrn() if spec.lrn else nn.Identity()
        self.conv2 = nn.Sequential(
            OrderedDict(
                reduce=ConvUnit(c1, c2red, 1, batch_norm=bn),
                conv3x3=ConvUnit(c2red, c2, 3, padding=1, batch_norm=bn),
            )
        )
        self.norm2 = _lrn() if spec.lrn else nn.Identity()
        self.pool2 = _max_pool_2x()

        rows = {row.name: row for row in INCEPTION_TABLE}
        channels: dict[str, int] = {}
        in_channels = c2
        for i, stage in enumerate(STAGES):
            for name in stage:
                row = rows[name].scaled(width)
                setattr(self, f"inception{name}", Inception(in_channels, row, batch_norm=bn))
                in_channels = channels[name] = row.out_channels
            if i < len(STAGES) - 1:
                setattr(self, f"pool{i + 3}", _max_pool_2x())

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

        # Registered last so the trunk's parameter order is the same with and without aux heads.
        self.aux1: AuxHead | None = None
        self.aux2: AuxHead | None = None
        if aux:
            for attr, name in zip(("aux1", "aux2"), AUX.attach_to, strict=True):
                head = AuxHead(
                    channels[name], num_classes, width=width, batch_norm=bn, dropout=aux_dropout
                )
                setattr(self, attr, head)

        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # Caffe's "xavier" filler: U(-sqrt(3/fan_in), sqrt(3/fan_in)), which is exactly
                # what kaiming_uniform_ draws with a linear gain.
                nn.init.kaiming_uniform_(module.weight, mode="fan_in", nonlinearity="linear")
                if module.bias is not None:
                    # Caffe's GoogLeNet starts every ReLU layer slightly open.
                    nn.init.constant_(module.bias, 0.2)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for classifier in self.classifiers():
            nn.init.zeros_(classifier.bias)

    def classifiers(self) -> list[nn.Linear]:
        """The final linear layer of every head (their biases start at 0, not 0.2)."""
        heads = [self.fc]
        heads += [head.classifier for head in (self.aux1, self.aux2) if head is not None]
        return heads

    def aux_heads(self) -> list[tuple[str, AuxHead]]:
        heads = [("aux1", self.aux1), ("aux2", self.aux2)]
        return [(name, head) for name, head in heads if head is not None]

    def table1_modules(self) -> list[tuple[str, nn.Module]]:
        """The submodule behind each parameterised row of Table 1, in table order.

        conv2's 1x1 reduce and 3x3 conv are one row, as in the paper; pools and LRN have no
        parameters and no rows here.
        """
        rows: list[tuple[str, nn.Module]] = [("conv1", self.conv1), ("conv2", self.conv2)]
        rows += [(row.name, getattr(self, f"inception{row.name}")) for row in INCEPTION_TABLE]
        rows.append(("fc", self.fc))
        return rows

    def forward(self, x: torch.Tensor) -> torch.Tensor | GoogLeNetOutputs:
        # Shapes at 224 x 224, width 1.
        # N x 3 x 224 x 224
        x = self.conv1(x)  # N x 64 x 112 x 112
        x = self.pool1(x)  # N x 64 x 56 x 56
        x = self.norm1(x)
        x = self.conv2(x)  # N x 192 x 56 x 56
        x = self.norm2(x)
        x = self.pool2(x)  # N x 192 x 28 x 28
        x = self.inception3a(x)  # N x 256 x 28 x 28
        x = self.inception3b(x)  # N x 480 x 28 x 28
        x = self.pool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        with_aux = self.training and self.aux1 is not None and self.aux2 is not None
        aux1 = self.aux1(x) if with_aux else None  # N x num_classes
        x = self.inception4b(x)  # N x 512 x 14 x 14
        x = self.inception4c(x)  # N x 512 x 14 x 14
        x = self.inception4d(x)  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if with_aux else None  # N x num_classes
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.pool4(x)  # N x 832 x 7 x 7
        x = self.inception5a(x)  # N x 832 x 7 x 7
        x = self.inception5b(x)  # N x 1024 x 7 x 7
        x = self.avgpool(x)  # N x 1024 x 1 x 1
        x = torch.flatten(x, 1)  # N x 1024
        x = self.dropout(x)
        x = self.fc(x)  # N x num_classes
        if aux1 is not None and aux2 is not None:
            return GoogLeNetOutputs(x, aux1, aux2)
        return x

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, width={self.width}, aux={self.has_aux}"


def build_googlenet(cfg: ModelConfig, num_classes: int) -> GoogLeNet:
    """The GoogLeNet a job config asks for (`archs.build_model` builds any arch).

    `cfg.input_size` is not an argument: the same model runs at any size from 32 px.
    """
    return GoogLeNet(
        num_classes,
        variant=cfg.variant,
        width=cfg.width,
        aux=cfg.aux,
        dropout=cfg.dropout,
        aux_dropout=cfg.aux_dropout,
    )
