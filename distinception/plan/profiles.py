"""Where a plan's costs come from: a profile file (the shipped ones name their measurements), or
`calibrate`, which measures a replica's step and a shard's apply on this machine.

A profile is a flat YAML mapping of `Profile`'s fields. The shipped ones live beside this module
in `profiles/` and are named without their `.yaml`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

from distinception.config import ConfigError, JobConfig
from distinception.plan.sim import MIB, Profile

SHIPPED = Path(__file__).with_name("profiles")


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a profile file; a bad one is one line naming the problem."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        path = SHIPPED / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"--profile={name_or_path!r}: expected a profile file or one of "
            + ", ".join(shipped_profiles())
        )
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"profile {path}: not YAML ({first})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"profile {path}: expected a mapping of {_fields()}")
    names = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(set(doc) - set(names))
    if unknown:
        raise ConfigError(f"profile {path}: unknown key {unknown[0]!r}; expected {_fields()}")
    doc.setdefault("name", path.stem)
    try:
        return Profile(**doc)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"profile {path}: {err}") from None


def save_profile(profile: Profile, path: str) -> None:
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    Path(path).expanduser().write_text(yaml.safe_dump(dataclasses.asdict(profile), sort_keys=False))


def _fields() -> str:
    return ", ".join(f.name for f in dataclasses.fields(Profile))


def calibrate(cfg: JobConfig, steps: int = 3, name: str = "") -> Profile:
    """Measure `cfg`'s replica step (forward and backward of one batch on one torch thread, as
    a CPU replica runs) and its shards' apply on this machine.

    The apply is the shard's fused optimizer step over a slice plus the two copies a
    cross-node push costs a shard (reading the pushed slice out of the object store, putting
    the new version in), timed at two slice sizes: the line through them gives the cost per
    MiB and the part that does not shrink with the slice. A cross-node push reaches a shard as
    a Ray call, so an actor's own cost per call (calls queued back to back) is added to that
    part, and the rest of a call's round trip is the messages' latency."""
    import torch

    from distinception.model import build_model, classifier_loss
    from distinception.ps import build_optimizer

    torch.set_num_threads(1)
    size, batch = cfg.model.input_size, cfg.data.batch_size
    model = build_model(cfg.model, cfg.data.classes).train()
    params = sum(p.numel() for p in model.parameters())
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, cfg.data.classes, (batch,))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        classifier_loss(model(images), labels, aux_weight=cfg.model.aux_weight).backward()

    step_s = _median_s(step, steps)

    def apply_s(mib: float) -> float:
        n = int(mib * MIB / 4)
        weights = torch.zeros(n, requires_grad=True)
        weights.grad = torch.randn(n)
        optimizer = build_optimizer([weights], [], cfg.optim)
        out, pushed = torch.empty(n), torch.randn(n)

        def one() -> None:
            with torch.no_grad():
                weights.grad.copy_(pushed)  # the pushed slice, read out of the object store
                optimizer.step()
                out.copy_(weights)  # the new version, put into the object store

        return _median_s(one, 5)

    small, large = 1.0, 16.0
    t_small, t_large = apply_s(small), apply_s(large)
    per_mib = max(0.0, (t_large - t_small) / (large - small))
    fixed = max(0.0, t_small - per_mib * small)
    per_call, round_trip = ray_call_costs()
    wire = 2 if cfg.transport.transfer_dtype == "bfloat16" else 4
    return Profile(
        name=name or f"{cfg.name}-here",
        step_s=round(step_s, 6),
        batch=batch,
        params=params,
        apply_fixed_s=round(fixed + per_call, 6),
        apply_s_per_mib=round(per_mib, 7),
        rpc_s=round(max(0.0, round_trip - per_call) / 2, 6),
        wire_bytes=wire,
        source=(
            f"`distinception plan --calibrate`: {describe(cfg)}, batch {batch}, one torch "
            f"thread, on {_machine()}, {time.strftime('%Y-%m-%d')}"
        ),
    )


def ray_call_costs(calls: int = 400) -> tuple[float, float]:
    """(an actor's cost per call with calls queued back to back, one call's round trip) of a
    Ray actor method that does nothing, on a local Ray started for it (or the one running)."""
    import ray

    from distinception.ps.session import ray_session

    @ray.remote(num_cpus=0)
    class Echo:
        def push(self, x: int) -> int:
            return x

    with ray_session(None, num_cpus=1):
        actor = Echo.remote()
        ray.get([actor.push.remote(i) for i in range(20)])  # started, warm
        t = time.perf_counter()
        ray.get([actor.push.remote(i) for i in range(calls)])
        per_call = (time.perf_counter() - t) / calls

        def one() -> None:
            ray.get(actor.push.remote(0))

        round_trip = _median_s(one, calls // 4)
        ray.kill(actor)
    return per_call, round_trip


def describe(cfg: JobConfig) -> str:
    from distinception.model import describe_model

    return f"{describe_model(cfg.model)} at {cfg.model.input_size} px"


def _median_s(fn: Any, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and lazy imports
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _machine() -> str:
    import os
    import platform

    return f"{os.cpu_count()} cores ({platform.machine()})"
