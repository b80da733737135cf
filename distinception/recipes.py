"""Named run recipes: whole `JobConfig`s a user starts from, each derived from a base.

`demo` fits a 2-core laptop in a few minutes; `paper` is the paper's setup (faithful model at
224 px, async SGD with momentum 0.9 and the 0.96-every-8-epochs schedule, the paper's augment)
and needs real data; `cluster` is `paper` spread over many replicas.
`tiny` exists for tests only: the real code paths at the smallest sizes that still learn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from distinception.config import (
    AUGMENT_PRESETS,
    AugmentConfig,
    AveragerConfig,
    ConfigError,
    DataConfig,
    JobConfig,
    ModelConfig,
    OptimConfig,
    PlacementConfig,
    PSConfig,
    RunConfig,
    apply_overrides,
    load_yaml,
)

#: Caffe's training crop: a 224 square out of the 256-resized image, as a share of its area.
CAFFE_CROP_AREA = (224 / 256) ** 2


def paper() -> JobConfig:
    return JobConfig(
        name="paper",
        model=ModelConfig(variant="faithful", width=1.0, input_size=224),
        data=DataConfig(image_size=256, batch_size=32, eval_batch_size=64),
        augment=AUGMENT_PRESETS["paper"],
        optim=OptimConfig(
            optimizer="sgd",
            lr=0.01,
            momentum=0.9,
            weight_decay=2e-4,
            lr_decay=0.96,
            lr_decay_epochs=8.0,
        ),
        ps=PSConfig(num_shards=4, num_replicas=8, warm_start_updates=1000),
        run=RunConfig(epochs=250.0, eval_interval_s=1800.0, checkpoint_interval_s=600.0),
    )


def cluster() -> JobConfig:
    base = paper()
    return base.replace(
        name="cluster",
        ps=dataclasses.replace(base.ps, num_shards=8, num_replicas=32),
    )


def demo() -> JobConfig:
    # The BN variant at width 1/4 on 64 px images: it learns the generated set in minutes on
    # two cores, where the faithful variant needs far longer to leave its plateau.
    return JobConfig(
        name="demo",
        model=ModelConfig(variant="bn", width=0.25, input_size=64),
        data=DataConfig(image_size=64, batch_size=32, eval_batch_size=128),
        augment=AUGMENT_PRESETS["caffe"],
        optim=OptimConfig(
            lr=0.02, momentum=0.9, weight_decay=1e-4, lr_decay=0.96, lr_decay_epochs=1.0
        ),
        # The closed-loop momentum correction: on this set and model it ends lower than any
        # fixed share, the plain loop and sync DDP at 125k examples and 2 replicas (BENCHMARKS.md,
        # "Async parity").
        ps=PSConfig(num_shards=2, num_replicas=2, momentum_correction="closed-loop"),
        # An EMA over ~200 updates (5% of the run's 3,900).
        averager=AveragerConfig(polyak="ema", ema_decay=0.995),
        placement=PlacementConfig(replica_cpus=0.75, shard_cpus=0.125, averager_cpus=0.25),
        # The budget is examples, so every machine ends at the same point of the curve: 25
        # epochs (125k examples) take about 5 minutes on two cores (BENCHMARKS.md, P4).
        run=RunConfig(epochs=25.0, eval_interval_s=30.0),
    )


def digits() -> JobConfig:
    """The real-data check: the UCI handwritten digits (1,438 training images, 10 classes) that
    `python bench/import_digits.py` imports from scikit-learn into `data.path`.

    The settings a plain torch loop trains well with (batch 64, SGD lr 0.05, momentum 0.9);
    training crops are Caffe's (a random (224/256)^2 of the area at aspect 1, no flip: a mirrored
    digit is another glyph), so they match the evaluation's center crop in scale."""
    base = demo()
    return base.replace(
        name="digits",
        model=ModelConfig(variant="bn", width=0.5, input_size=32),
        data=DataConfig(
            path="~/.cache/distinception/digits",
            image_size=32,
            batch_size=64,
            eval_batch_size=128,
        ),
        augment=AugmentConfig(
            area_min=CAFFE_CROP_AREA,
            area_max=CAFFE_CROP_AREA,
            aspect_min=1.0,
            aspect_max=1.0,
            flip=False,
            photometric=0.0,
            lighting=0.0,
            interpolation="bilinear",
        ),
        # A run is 250 updates whose error still falls steeply at the end: an EMA over ~10
        # updates follows the weights; the demo's ~200 would hold most of the run back.
        optim=dataclasses.replace(base.optim, lr=0.05),
        # The platform's default correction, not the demo's closed loop: the README's other
        # archs train on these settings too, and ResNet-18 at this lr ends 2.5 points behind
        # under the closed loop (and swings off under half).
        ps=dataclasses.replace(base.ps, momentum_correction=PSConfig.momentum_correction),
        averager=dataclasses.replace(base.averager, ema_decay=0.9),
        run=RunConfig(epochs=10.0, eval_interval_s=10.0),
    )


def tiny() -> JobConfig:
    """For tests only: a width-1/8 model on 32 px images, a few hundred updates."""
    base = demo()
    return base.replace(
        name="tiny",
        model=ModelConfig(variant="bn", width=0.125, input_size=32),
        data=DataConfig(
            classes=4,
            per_class=64,
            val_per_class=16,
            image_size=32,
            batch_size=16,
            eval_batch_size=64,
        ),
        optim=dataclasses.replace(base.optim, lr=0.02),
        averager=dataclasses.replace(base.averager, ema_decay=0.95, interval_s=0.25),
        placement=dataclasses.replace(
            base.placement, replica_cpus=0.5, shard_cpus=0.1, averager_cpus=0.1
        ),
        run=RunConfig(max_examples=4000, eval_interval_s=5.0, progress=False),
    )


RECIPES: dict[str, Callable[[], JobConfig]] = {
    "demo": demo,
    "paper": paper,
    "cluster": cluster,
    "digits": digits,
    "tiny": tiny,
}


def get_recipe(name: str) -> JobConfig:
    if name not in RECIPES:
        raise ConfigError(f"--recipe={name!r}: expected one of " + ", ".join(RECIPES))
    return RECIPES[name]()


def load_config(
    recipe: str = "demo", config: str | None = None, overrides: Sequence[str] = ()
) -> JobConfig:
    """A job as the command line builds it: a named recipe, then a YAML file over it, then
    `section.key=value` overrides, each validated as it is applied. It lives beside the recipes,
    not with training, so that building, printing or refusing a config loads no torch."""
    cfg = get_recipe(recipe)
    if config:
        cfg = load_yaml(config, base=cfg)
    return apply_overrides(cfg, list(overrides))
