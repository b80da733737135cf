"""One small frozen dataclass per part of a job, each checking its own values, composed into
`JobConfig`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from distinception.config.checks import _check, _choice, _fail

INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "random")
VARIANTS = ("faithful", "bn")
OPTIMIZERS = ("sgd", "adagrad", "adam", "adamw", "rmsprop")
POLYAK_MODES = ("uniform", "ema", "off")
TRANSFER_DTYPES = ("float32", "bfloat16")
COMPUTE_DTYPES = ("float32", "bfloat16")
TRANSPORTS = ("auto", "object_store")
MOMENTUM_CORRECTION = ("auto", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Which GoogLeNet to build: `width` scales every channel count, `input_size` the input."""

    variant: str = "faithful"
    width: float = 1.0
    input_size: int = 224
    aux: bool = True
    aux_weight: float = 0.3
    dropout: float = 0.4
    aux_dropout: float = 0.7

    def __post_init__(self) -> None:
        _choice("variant", self.variant, VARIANTS)
        _check(0 < self.width <= 4, "width", self.width, "a number in (0, 4]")
        _check(self.input_size >= 32, "input_size", self.input_size, "an integer >= 32")
        _check(self.aux_weight >= 0, "aux_weight", self.aux_weight, "a number >= 0")
        _check(0 <= self.dropout < 1, "dropout", self.dropout, "a number in [0, 1)")
        _check(0 <= self.aux_dropout < 1, "aux_dropout", self.aux_dropout, "a number in [0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """Where the Parquet shards are; an empty `path` means the built-in generated data set."""

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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class PSConfig:
    """The asynchronous parameter server: shards, replicas, optimizer, staleness, averaging.

    Learning-rate schedule: multiplied by `lr_decay` every `lr_decay_epochs` epochs counted in
    examples seen (paper: 0.96 every 8), after a linear warm-up of `warmup_examples`.

    Elastic replicas (`elastic: true`): `num_replicas` is the most replicas the job runs and
    `min_replicas` how many must be up (within `elastic_wait_s`) before training starts. The
    coordinator asks the autoscaler for room for `num_replicas`, adds replicas as nodes arrive and
    goes on with fewer when nodes leave. `replica_resources` and `shard_resources` (custom Ray
    resources, e.g. {replica: 1}) pin replicas to worker nodes and shards plus the averager to the
    head or parameter-server nodes that declare those resources.
    """

    num_shards: int = 2
    num_replicas: int = 2
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_decay: float = 0.96
    lr_decay_epochs: float = 8.0
    warmup_examples: int = 0
    n_fetch: int = 1
    n_push: int = 1
    staleness: str = "none"
    #: Momentum compensation for asynchrony: "auto" lowers each shard's explicit momentum by
    #: the implicit momentum its measured staleness adds (s / (s + 1), Mitliagkas et al. 2016),
    #: so the total stays `momentum`; "none" keeps `momentum` as it is. Applies to the
    #: optimizers with a momentum term (sgd, rmsprop); adam/adamw/adagrad are left alone.
    momentum_correction: str = "auto"
    #: Delay compensation (DC-ASGD, Zheng et al. 2017): lambda of g + lambda g*g*(w_now -
    #: w_pulled), 0 = off. `dc_adaptive` divides lambda by a running RMS of the gradient (their
    #: DC-ASGD-a); each shard keeps `dc_history` past versions of its slice (0 = 2 x replicas
    #: + 2) to know w_pulled.
    delay_compensation: float = 0.0
    dc_adaptive: bool = True
    dc_history: int = 0
    #: Steps a replica may compute on the weights it has while its next pull is in flight
    #: (overlap of communication and compute; each step of lag adds one version of staleness).
    #: -1 = auto: 1 under the none/scale policies with several replicas, else 0.
    max_lag: int = -1
    transfer_dtype: str = "float32"
    #: How replicas and the averager reach the shards. "auto": through shared memory when on the
    #: shard's node (weights read in place, gradients written once; always fp32, exact), through
    #: the object store otherwise (`transfer_dtype` applies there). "object_store": always.
    transport: str = "auto"
    #: The replicas' forward/backward precision: "bfloat16" runs them under autocast (tensor
    #: cores on a GPU); weights, gradients and the shards' optimizer stay fp32 either way.
    compute_dtype: str = "float32"
    clip_norm: float = 0.0
    warm_start_updates: int = 0
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    shard_cpus: float = 0.25
    averager_cpus: float = 0.25
    max_replica_restarts: int = 5
    max_shard_restarts: int = 5
    polyak: str = "uniform"
    polyak_start: int = 0
    ema_decay: float = 0.999
    averager_interval_s: float = 0.5
    elastic: bool = False
    min_replicas: int = 1
    elastic_wait_s: float = 900.0
    replica_resources: dict[str, float] = field(default_factory=dict)
    shard_resources: dict[str, float] = field(default_factory=dict)

    @property
    def dc_versions(self) -> int:
        """Past versions a shard keeps for delay compensation (0 when it is off)."""
        if not self.delay_compensation:
            return 0
        return self.dc_history or 2 * self.num_replicas + 2

    @property
    def lag(self) -> int:
        """`max_lag` resolved: how many steps a replica may run ahead of its newest pull."""
        if self.max_lag >= 0:
            return self.max_lag
        bounded = parse_staleness(self.staleness)[0] == "bound"
        return 0 if bounded or self.num_replicas == 1 else 1

    def __post_init__(self) -> None:
        _check(1 <= self.num_shards <= 256, "num_shards", self.num_shards, "an integer in [1, 256]")
        _check(self.num_replicas >= 1, "num_replicas", self.num_replicas, "an integer >= 1")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 < self.lr_decay <= 1, "lr_decay", self.lr_decay, "a number in (0, 1]")
        _check(self.lr_decay_epochs > 0, "lr_decay_epochs", self.lr_decay_epochs, "a number > 0")
        _check(
            self.warmup_examples >= 0, "warmup_examples", self.warmup_examples, "an integer >= 0"
        )
        _check(self.n_fetch >= 1, "n_fetch", self.n_fetch, "an integer >= 1")
        _check(self.n_push >= 1, "n_push", self.n_push, "an integer >= 1")
        parse_staleness(self.staleness)
        _choice("momentum_correction", self.momentum_correction, MOMENTUM_CORRECTION)
        _check(
            self.delay_compensation >= 0,
            "delay_compensation",
            self.delay_compensation,
            "a number >= 0 (0 = off)",
        )
        _check(self.dc_history >= 0, "dc_history", self.dc_history, "an integer >= 0 (0 = auto)")
        _check(self.max_lag >= -1, "max_lag", self.max_lag, "an integer >= -1 (-1 = auto)")
        _choice("transfer_dtype", self.transfer_dtype, TRANSFER_DTYPES)
        _choice("transport", self.transport, TRANSPORTS)
        _choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)
        _check(self.clip_norm >= 0, "clip_norm", self.clip_norm, "a number >= 0 (0 = off)")
        _check(
            self.warm_start_updates >= 0,
            "warm_start_updates",
            self.warm_start_updates,
            "an integer >= 0",
        )
        for name in ("replica_cpus", "shard_cpus", "averager_cpus"):
            value = getattr(self, name)
            _check(0 < value <= 64, name, value, "a number of CPUs in (0, 64]")
        _check(0 <= self.replica_gpus <= 8, "replica_gpus", self.replica_gpus, "a number in [0, 8]")
        _check(
            self.max_replica_restarts >= -1,
            "max_replica_restarts",
            self.max_replica_restarts,
            "an integer >= -1 (-1 = unlimited)",
        )
        _check(
            self.max_shard_restarts >= -1,
            "max_shard_restarts",
            self.max_shard_restarts,
            "an integer >= -1 (-1 = unlimited)",
        )
        _choice("polyak", self.polyak, POLYAK_MODES)
        _check(
            self.polyak_start >= 0, "polyak_start", self.polyak_start, "an integer >= 0 (updates)"
        )
        _check(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in (0, 1)")
        _check(
            self.averager_interval_s > 0,
            "averager_interval_s",
            self.averager_interval_s,
            "a number > 0",
        )
        _check(
            1 <= self.min_replicas <= self.num_replicas,
            "min_replicas",
            self.min_replicas,
            f"an integer in [1, num_replicas={self.num_replicas}]",
        )
        _check(self.elastic_wait_s > 0, "elastic_wait_s", self.elastic_wait_s, "a number > 0")
        for name in ("replica_resources", "shard_resources"):
            object.__setattr__(self, name, _custom_resources(name, getattr(self, name)))


def _custom_resources(name: str, value: Any) -> dict[str, float]:
    """Custom Ray resources as {name: amount}; CPU/GPU have their own fields."""
    expected = "a mapping of custom resource names to amounts >= 0, e.g. {replica: 1}"
    if not isinstance(value, Mapping):
        _fail(name, value, expected)
    out: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key or key in ("CPU", "GPU", "memory"):
            _fail(name, value, expected + " (CPU/GPU/memory have their own fields)")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
            _fail(name, value, expected)
        out[key] = float(amount)
    return out


def parse_staleness(spec: str) -> tuple[str, int]:
    """`none` (Downpour), `scale` (lr / staleness) or `bound:k` (refuse pushes staler than k)."""
    if spec in ("none", "scale"):
        return spec, 0
    kind, _, k = spec.partition(":")
    if kind == "bound" and k.isdigit():
        return "bound", int(k)
    _fail("staleness", spec, "none, scale or bound:K with K an integer >= 0")
    raise AssertionError  # unreachable


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
        _check(
            self.checkpoint_interval_s > 0,
            "checkpoint_interval_s",
            self.checkpoint_interval_s,
            "a number > 0",
        )


@dataclass(frozen=True)
class JobConfig:
    """One whole job: the parts above, each validated on its own."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(epochs=1.0))

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
