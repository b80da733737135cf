"""The parameter server's sections, each owned by the part that reads it: the optimizer and its
schedule (`OptimConfig`), the push/staleness protocol (`PSConfig`), weight averaging
(`AveragerConfig`), how weights and gradients travel (`TransportConfig`) and where the actors
run (`PlacementConfig`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distinception.config.checks import _check, _choice, _fail

OPTIMIZERS = ("sgd", "adagrad", "adam", "adamw", "rmsprop")
POLYAK_MODES = ("uniform", "ema", "off")
TRANSFER_DTYPES = ("float32", "bfloat16")
COMPUTE_DTYPES = ("float32", "bfloat16")
TRANSPORTS = ("auto", "object_store")


@dataclass(frozen=True)
class OptimConfig:
    """The shards' optimizer and its learning-rate schedule.

    The rate is multiplied by `lr_decay` every `lr_decay_epochs` epochs counted in examples seen
    (paper: 0.96 every 8), after a linear warm-up of `warmup_examples`. `clip_norm` (0 = off)
    clips each gradient's norm."""

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_decay: float = 0.96
    lr_decay_epochs: float = 8.0
    warmup_examples: int = 0
    clip_norm: float = 0.0

    def __post_init__(self) -> None:
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.lr > 0 and math.isfinite(self.lr), "lr", self.lr, "a finite number > 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 < self.lr_decay <= 1, "lr_decay", self.lr_decay, "a number in (0, 1]")
        _check(self.lr_decay_epochs > 0, "lr_decay_epochs", self.lr_decay_epochs, "a number > 0")
        _check(
            self.warmup_examples >= 0, "warmup_examples", self.warmup_examples, "an integer >= 0"
        )
        _check(self.clip_norm >= 0, "clip_norm", self.clip_norm, "a number >= 0 (0 = off)")


@dataclass(frozen=True)
class PSConfig:
    """The asynchronous parameter server's protocol: shards, replicas, how often they pull and
    push, and what a shard does with a stale gradient."""

    num_shards: int = 2
    num_replicas: int = 2
    n_fetch: int = 1
    n_push: int = 1
    staleness: str = "none"
    #: Momentum compensation for asynchrony: each shard lowers its explicit momentum by a share
    #: of the implicit momentum its measured staleness adds (s / (s + 1), Mitliagkas et al.
    #: 2016). "full" takes all of it off, so the total stays `optim.momentum` ("auto" is its
    #: earlier name); "none" keeps the momentum as it is; "partial:F" takes off the share F in
    #: [0, 1]; "closed-loop" starts at full and moves the share until the total momentum the
    #: shard measures is `optim.momentum` (YellowFin's closed loop, Zhang & Mitliagkas 2017).
    #: The default, full, is the one that trained with a plain loop's lr on every model and set
    #: measured. The closed loop ends lowest of all on the built-in set with GoogLeNet (the
    #: `demo` recipe takes it) but 2.5 points behind full with ResNet-18 on the digits, and
    #: slower to 5% error than full on the digits at 4 replicas; half lets ResNet-18 swing off
    #: (BENCHMARKS.md, "Async parity").
    #: Applies to the optimizers with a momentum term (sgd, rmsprop); adam/adamw/adagrad are
    #: left alone.
    momentum_correction: str = "full"
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
    warm_start_updates: int = 0

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
        _check(self.n_fetch >= 1, "n_fetch", self.n_fetch, "an integer >= 1")
        _check(self.n_push >= 1, "n_push", self.n_push, "an integer >= 1")
        parse_staleness(self.staleness)
        parse_momentum_correction(self.momentum_correction)
        _check(
            self.delay_compensation >= 0,
            "delay_compensation",
            self.delay_compensation,
            "a number >= 0 (0 = off)",
        )
        _check(self.dc_history >= 0, "dc_history", self.dc_history, "an integer >= 0 (0 = auto)")
        _check(self.max_lag >= -1, "max_lag", self.max_lag, "an integer >= -1 (-1 = auto)")
        _check(
            self.warm_start_updates >= 0,
            "warm_start_updates",
            self.warm_start_updates,
            "an integer >= 0",
        )


def parse_staleness(spec: str) -> tuple[str, int]:
    """`none` (Downpour), `scale` (lr / staleness) or `bound:k` (refuse pushes staler than k)."""
    if spec in ("none", "scale"):
        return spec, 0
    kind, _, k = spec.partition(":")
    if kind == "bound" and k.isdigit():
        return "bound", int(k)
    _fail("staleness", spec, "none, scale or bound:K with K an integer >= 0")
    raise AssertionError  # unreachable


def parse_momentum_correction(spec: str) -> tuple[str, float]:
    """(kind, share): the share of the measured implicit momentum a shard takes off its
    explicit momentum, `fixed` at `full` (or `auto`) 1, `none` 0 or `partial:F` F (a number in
    [0, 1]); or `closed-loop`, a share that starts at 1 and follows the total momentum the
    shard measures (`policies.MomentumLoop`)."""
    if spec in ("full", "auto", "none"):
        return "fixed", 0.0 if spec == "none" else 1.0
    if spec == "closed-loop":
        return "closed-loop", 1.0
    kind, _, share = str(spec).partition(":")
    if kind == "partial":
        try:
            value = float(share)
        except ValueError:
            value = math.nan
        if 0.0 <= value <= 1.0:
            return "fixed", value
    _fail(
        "momentum_correction",
        spec,
        "partial:F with F a number in [0, 1], full, none or closed-loop",
    )
    raise AssertionError  # unreachable


@dataclass(frozen=True)
class AveragerConfig:
    """Polyak averaging of the shards' weights, sampled every `interval_s` by the averager:
    `uniform` (a running mean from update `polyak_start` on), `ema` (decay `ema_decay` per
    update: a sample k updates after the last one is weighed by `1 - ema_decay ** k`) or
    `off`."""

    polyak: str = "uniform"
    polyak_start: int = 0
    ema_decay: float = 0.999
    interval_s: float = 0.5

    def __post_init__(self) -> None:
        _choice("polyak", self.polyak, POLYAK_MODES)
        _check(
            self.polyak_start >= 0, "polyak_start", self.polyak_start, "an integer >= 0 (updates)"
        )
        _check(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "a number in (0, 1)")
        _check(self.interval_s > 0, "interval_s", self.interval_s, "a number > 0")


@dataclass(frozen=True)
class TransportConfig:
    """How weights and gradients travel between replicas, the averager and the shards, and the
    replicas' compute precision."""

    #: "auto": through shared memory when on the shard's node (weights read in place, gradients
    #: written once; always fp32, exact), through the object store otherwise (`transfer_dtype`
    #: applies there). "object_store": always.
    channel: str = "auto"
    transfer_dtype: str = "float32"
    #: The replicas' forward/backward precision: "bfloat16" runs them under autocast (tensor
    #: cores on a GPU); weights, gradients and the shards' optimizer stay fp32 either way.
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        _choice("channel", self.channel, TRANSPORTS)
        _choice("transfer_dtype", self.transfer_dtype, TRANSFER_DTYPES)
        _choice("compute_dtype", self.compute_dtype, COMPUTE_DTYPES)


@dataclass(frozen=True)
class PlacementConfig:
    """Where the actors run, what each asks of Ray, and how often Ray restarts them.

    Elastic replicas (`elastic: true`): `ps.num_replicas` is the most replicas the job runs and
    `min_replicas` how many must be up (within `elastic_wait_s`) before training starts. The
    coordinator asks the autoscaler for room for `ps.num_replicas`, adds replicas as nodes arrive
    and goes on with fewer when nodes leave. `replica_resources` and `shard_resources` (custom
    Ray resources, e.g. {replica: 1}) pin replicas to worker nodes and shards plus the averager
    to the head or parameter-server nodes that declare those resources.
    """

    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    shard_cpus: float = 0.25
    averager_cpus: float = 0.25
    replica_resources: dict[str, float] = field(default_factory=dict)
    shard_resources: dict[str, float] = field(default_factory=dict)
    max_replica_restarts: int = 5
    max_shard_restarts: int = 5
    elastic: bool = False
    min_replicas: int = 1
    elastic_wait_s: float = 900.0

    def __post_init__(self) -> None:
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
        _check(self.min_replicas >= 1, "min_replicas", self.min_replicas, "an integer >= 1")
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
