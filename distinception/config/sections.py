"""One small frozen dataclass per part of a job, each checking its own values, composed into
`JobConfig` (the parameter server's parts are in `config.ps`)."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distinception.config.checks import ConfigError, _check, _choice, _fail
from distinception.config.ps import (
    AveragerConfig,
    OptimConfig,
    PlacementConfig,
    PSConfig,
    TransportConfig,
)

INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "random")
VARIANTS = ("faithful", "bn")
SHUFFLES = ("rows", "blocks")
EVAL_SCORINGS = ("live", "after")
#: `model.arch` names: this project's GoogLeNet, `torchvision:NAME`, or `package.module:function`.
GOOGLENET = "googlenet"
TORCHVISION = "torchvision"
ARCH_FORMS = f"{GOOGLENET}, {TORCHVISION}:NAME or package.module:function"
#: Test-time crop schemes (Table 3's 1, 10 and 144 crops) and the crops each takes of an image.
CROP_SCHEMES = {"center": 1, "ten": 10, "paper144": 144}


def check_crops(schemes: Iterable[str]) -> list[str]:
    """`--crops` names checked where torch is not loaded, so a mistaken `evaluate` line is
    refused before any model or image is."""
    schemes = list(schemes)
    for s in schemes:
        if s not in CROP_SCHEMES:
            raise ConfigError(f"--crops item {s!r}: expected one of {', '.join(CROP_SCHEMES)}")
    if not schemes:
        raise ConfigError("--crops: expected at least one of " + ", ".join(CROP_SCHEMES))
    return schemes


def _check_arch(arch: str) -> None:
    """A name that builds: torchvision's own list for `torchvision:` names, an importable
    callable for a user's builder. torchvision and the user's module are imported only for
    those names, so a GoogLeNet job never pays for them here."""
    if arch == GOOGLENET:
        return
    source, sep, name = arch.partition(":")
    _check(bool(sep and source and name.isidentifier()), "arch", arch, ARCH_FORMS)
    if source == TORCHVISION:
        import torchvision.models

        names = torchvision.models.list_models(module=torchvision.models)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        _check(name in names, "arch", arch, f"a torchvision classification model{hint}")
        return
    try:
        module = importlib.import_module(source)
    except ImportError as err:
        _fail("arch", arch, f"{ARCH_FORMS}; importing {source} failed: {err}")
    if not callable(getattr(module, name, None)):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        close = difflib.get_close_matches(name, public, n=3, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        _fail("arch", arch, f"a function of {source}{hint}")


def _check_width_mult(arch: str, width: float) -> None:
    """A width other than 1 is a torchvision builder's `width_mult`, which only some take; built
    on the meta device to find out (no memory, no init), so the job fails before it starts."""
    import torch
    from torchvision.models import get_model

    try:
        with torch.device("meta"):
            get_model(arch.partition(":")[2], weights=None, width_mult=width)
    except TypeError:
        _fail("width", width, f"1.0 for {arch} (its builder takes no width_mult)")


@dataclass(frozen=True)
class ModelConfig:
    """Which classifier to build (`arch`, see `model.archs`) and at what input size. `width`
    scales GoogLeNet's every channel count, or is a torchvision builder's `width_mult`; the
    other fields but `aux_weight` are GoogLeNet's own."""

    arch: str = GOOGLENET
    variant: str = "faithful"
    width: float = 1.0
    input_size: int = 224
    aux: bool = True
    aux_weight: float = 0.3
    dropout: float = 0.4
    aux_dropout: float = 0.7

    def __post_init__(self) -> None:
        _check_arch(self.arch)
        _choice("variant", self.variant, VARIANTS)
        _check(0 < self.width <= 4, "width", self.width, "a number in (0, 4]")
        if self.width != 1.0 and self.arch.startswith(f"{TORCHVISION}:"):
            _check_width_mult(self.arch, self.width)
        _check(self.input_size >= 32, "input_size", self.input_size, "an integer >= 32")
        _check(self.aux_weight >= 0, "aux_weight", self.aux_weight, "a number >= 0")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")
        _check(0 <= self.aux_dropout < 1, "aux_dropout", self.aux_dropout, "a number in [0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """Where the Parquet shards are; an empty `path` means the built-in generated data set.
    `shuffle` is how each epoch's rows are dealt to the replicas (`data.loader`): `rows`, a
    shuffle of every row with each replica's share held in memory, or `blocks`, row groups
    dealt out and read ahead a window at a time, for buckets and sets larger than memory."""

    path: str = ""
    cache_dir: str = "~/.cache/distinception"
    classes: int = 10
    per_class: int = 500
    val_per_class: int = 100
    image_size: int = 64
    seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 128
    val_limit: int = 0
    shuffle: str = "rows"

    def __post_init__(self) -> None:
        _choice("shuffle", self.shuffle, SHUFFLES)
        _check(2 <= self.classes <= 1000, "classes", self.classes, "an integer in [2, 1000]")
        _check(self.per_class >= 1, "per_class", self.per_class, "an integer >= 1")
        _check(self.val_per_class >= 1, "val_per_class", self.val_per_class, "an integer >= 1")
        _check(self.image_size >= 16, "image_size", self.image_size, "an integer >= 16")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, "an integer >= 1")
        _check(
            self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "an integer >= 1"
        )
        _check(self.val_limit >= 0, "val_limit", self.val_limit, "an integer >= 0 (0 = all)")


@dataclass(frozen=True)
class AugmentConfig:
    """How training images are sampled and coloured: the augment (paper Section 6, Howard 2013).

    `photometric` is the strength s of brightness/contrast/saturation factors drawn from
    U[1-s, 1+s] in a random order (0 turns them off); `lighting` is the std of AlexNet's PCA
    lighting noise (0 turns it off). `interpolation` is one fixed mode or `random` per image.
    """

    area_min: float = 0.08
    area_max: float = 1.0
    aspect_min: float = 3 / 4
    aspect_max: float = 4 / 3
    flip: bool = True
    photometric: float = 0.5
    lighting: float = 0.1
    interpolation: str = "random"

    def __post_init__(self) -> None:
        _check(0 < self.area_min <= 1, "area_min", self.area_min, "a number in (0, 1]")
        _check(
            self.area_min <= self.area_max <= 1,
            "area_max",
            self.area_max,
            f"a number in [area_min={self.area_min}, 1]",
        )
        _check(0 < self.aspect_min <= 1, "aspect_min", self.aspect_min, "a number in (0, 1]")
        _check(1 <= self.aspect_max <= 10, "aspect_max", self.aspect_max, "a number in [1, 10]")
        _check(0 <= self.photometric < 1, "photometric", self.photometric, "a number in [0, 1)")
        _check(0 <= self.lighting <= 1, "lighting", self.lighting, "a number in [0, 1]")
        _choice("interpolation", self.interpolation, INTERPOLATIONS)


#: Named augments: the paper's, the BVLC Caffe reproduction's, and none.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "paper": AugmentConfig(),
    "caffe": AugmentConfig(
        area_min=1.0,
        aspect_min=1.0,
        aspect_max=1.0,
        photometric=0.0,
        lighting=0.0,
        interpolation="bilinear",
    ),
    "none": AugmentConfig(
        area_min=1.0,
        aspect_min=1.0,
        aspect_max=1.0,
        flip=False,
        photometric=0.0,
        lighting=0.0,
        interpolation="bilinear",
    ),
}


#: A URI's scheme of two or more characters (one letter is a Windows drive): sqlite, http,
#: postgresql+psycopg2, databricks, ...
_URI_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow: an empty `tracking_uri` means the local sqlite store under `./mlruns`."""

    tracking_uri: str = ""
    experiment: str = "distinception"
    run_name: str = ""
    log_model: bool = True
    register_as: str = ""

    def __post_init__(self) -> None:
        _check(bool(self.experiment.strip()), "experiment", self.experiment, "a non-empty name")
        # MLflow 3 refuses to write to a plain directory (its file store), and would say so only
        # once the job has started.
        scheme = _URI_SCHEME.match(self.tracking_uri)
        _check(
            self.tracking_uri in ("", "databricks", "databricks-uc")
            or (scheme is not None and scheme[1].lower() != "file"),
            "tracking_uri",
            self.tracking_uri,
            "empty (sqlite under ./mlruns) or a URI such as sqlite:///PATH/mlflow.db or "
            "http://HOST:PORT (MLflow no longer writes to a plain directory)",
        )


@dataclass(frozen=True)
class RunConfig:
    """Budget, evaluation and checkpoint cadence of one training job.

    The job stops at the first budget reached; 0 means that budget is not set, and at least one
    must be. `epochs` counts passes over the training split by all replicas together.
    `seed` orders the data; `init_seed` (-1: same as `seed`) draws the initial weights.
    """

    epochs: float = 0.0
    max_examples: int = 0
    max_seconds: float = 0.0
    eval_interval_s: float = 30.0
    #: When the evaluations asked for every `eval_interval_s` are scored. "live": at once,
    #: beside training, so their metrics reach MLflow as the job runs; on cores the replicas
    #: also use, that scoring takes from their time. "after": the weights are held (two copies
    #: of the model per evaluation) and scored once training ends, at the examples and seconds
    #: they were held at, so scoring stays off the training clock, as the benchmarks' sync DDP
    #: and local loop stop their clocks to score. For benchmarks and short runs.
    eval_scoring: str = "live"
    checkpoint_dir: str = ""
    checkpoint_interval_s: float = 60.0
    seed: int = 0
    init_seed: int = -1
    progress: bool = True

    @property
    def model_seed(self) -> int:
        """Seed of the initial weights; -1 follows `seed`. Ensemble members share it (as in the
        paper) while `seed` gives each its own data order."""
        return self.seed if self.init_seed < 0 else self.init_seed

    def example_budget(self, train_examples: int) -> int:
        """Examples the job trains on before it stops: the smaller of `epochs` (over a training
        split of `train_examples`) and `max_examples`, or 0 when it only has a time budget.

        The coordinator stops on it, Tune's reports end at it and ASHA places its rungs by it,
        so all three must agree on one number."""
        budgets = []
        if self.epochs:
            budgets.append(math.ceil(self.epochs * train_examples))
        if self.max_examples:
            budgets.append(self.max_examples)
        return min(budgets) if budgets else 0

    def __post_init__(self) -> None:
        _check(self.epochs >= 0, "epochs", self.epochs, "a number >= 0")
        _check(self.max_examples >= 0, "max_examples", self.max_examples, "an integer >= 0")
        _check(self.max_seconds >= 0, "max_seconds", self.max_seconds, "a number >= 0")
        _check(
            self.epochs > 0 or self.max_examples > 0 or self.max_seconds > 0,
            "epochs",
            self.epochs,
            "a budget: one of epochs, max_examples or max_seconds > 0",
        )
        _check(self.init_seed >= -1, "init_seed", self.init_seed, "an integer >= -1 (-1 = seed)")
        _check(self.eval_interval_s > 0, "eval_interval_s", self.eval_interval_s, "a number > 0")
        _choice("eval_scoring", self.eval_scoring, EVAL_SCORINGS)
        _check(
            self.checkpoint_interval_s > 0,
            "checkpoint_interval_s",
            self.checkpoint_interval_s,
            "a number > 0",
        )


@dataclass(frozen=True)
class JobConfig:
    """One whole job: its sections, each validated on its own; the checks that span two
    sections run here, and name both fields by their dotted keys."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    averager: AveragerConfig = field(default_factory=AveragerConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(epochs=1.0))

    def __post_init__(self) -> None:
        n = self.ps.num_replicas
        _check(
            self.placement.min_replicas <= n,
            "placement.min_replicas",
            self.placement.min_replicas,
            f"an integer in [1, ps.num_replicas={n}]",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted keys, for MLflow params and Tune search spaces."""
        return dict(_flatten(self.to_dict()))

    def replace(self, **sections: Any) -> JobConfig:
        return dataclasses.replace(self, **sections)

    def to_yaml(self) -> str:
        import yaml  # imported here: model code runs where only torch is installed

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in d.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
