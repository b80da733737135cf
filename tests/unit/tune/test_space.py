"""Search spaces over the config dataclasses, and how trials are sized to fit the cluster."""

from __future__ import annotations

import pytest

from distinception.config import ConfigError, JobConfig, apply_overrides
from distinception.recipes import get_recipe
from distinception.tune.space import (
    DEFAULT_SPACE,
    Choice,
    Grid,
    SearchSpace,
    Uniform,
    build_space,
    parse_domain,
)
from distinception.tune.trials import bundles, fit_to, plan_concurrency, trial_cpus


def test_default_space_is_valid_and_nested_by_section():
    space = SearchSpace(DEFAULT_SPACE)
    tune_space = space.to_tune()
    assert set(tune_space) == {"augment", "optim"}
    assert {"area_min", "aspect_max", "photometric", "lighting", "interpolation"} <= set(
        tune_space["augment"]
    )
    assert "lr" in tune_space["optim"]


def test_a_sample_becomes_a_job_and_the_aspect_range_stays_symmetric():
    base = get_recipe("demo")
    cfg = SearchSpace(DEFAULT_SPACE).apply(
        base,
        {
            "augment": {"area_min": 0.3, "aspect_max": 1.25, "interpolation": "area"},
            "optim": {"lr": 0.01},
        },
    )
    assert cfg.augment.area_min == 0.3
    assert cfg.augment.aspect_max == 1.25
    assert cfg.augment.aspect_min == pytest.approx(0.8)
    assert cfg.augment.interpolation == "area"
    assert cfg.optim.lr == 0.01
    assert cfg.model == base.model and cfg.run == base.run


def test_unknown_fields_and_bad_ranges_fail_in_one_line():
    with pytest.raises(ConfigError, match=r"did you mean 'augment\.area_min'"):
        SearchSpace({"augment.area_mn": Uniform(0.1, 1.0)})
    with pytest.raises(ConfigError, match=r"augment.area_min=0.0: expected a number in \(0, 1\]"):
        SearchSpace({"augment.area_min": Uniform(0.0, 1.0)})
    with pytest.raises(ConfigError, match="expected low <= high"):
        SearchSpace({"optim.lr": Uniform(0.1, 0.01)})
    with pytest.raises(ConfigError, match="interpolation"):
        SearchSpace({"augment.interpolation": Choice(("bilinear", "lanczos"))})
    with pytest.raises(ConfigError, match="low > 0"):
        SearchSpace({"optim.lr": Uniform(0.0, 0.1, log=True)})


def test_parse_domain_and_build_space_with_fixed_fields():
    assert parse_domain("optim.lr", "loguniform:1e-3:0.1") == Uniform(1e-3, 0.1, log=True)
    assert parse_domain("augment.flip", "choice:true,false") == Choice((True, False))
    with pytest.raises(ConfigError, match="expected uniform:LOW:HIGH"):
        parse_domain("optim.lr", "normal:0:1")
    space = build_space(
        ["augment.flip=choice:true,false"], fixed=["optim.lr", "augment.aspect_min"]
    )
    assert "optim.lr" not in space.domains and "augment.flip" in space.domains
    # aspect_min was fixed by the user: it is not tied to aspect_max any more.
    cfg = space.apply(JobConfig(), {"augment.aspect_max": 1.5})
    assert cfg.augment.aspect_min == JobConfig().augment.aspect_min


def test_trials_fit_the_cluster_without_oversubscribing_it():
    demo = get_recipe("demo")
    need = trial_cpus(demo)
    assert need > 2.0  # the demo's actors alone take the whole 2-core machine
    assert plan_concurrency(demo, 2.0, None) == 1
    fitted = fit_to(demo, 1.0)
    total = sum(b["CPU"] for b in bundles(fitted))
    assert total <= 1.0 + 1e-9
    assert len(bundles(fitted)) == 2  # the trial's driver, and one bundle all its actors share
    assert fit_to(demo, 100.0) == demo  # never scaled up
    with pytest.raises(ConfigError, match="max-concurrent=0"):
        plan_concurrency(demo, 2.0, 0)


def test_cluster_placement_gives_each_role_its_own_bundle():
    cfg = apply_overrides(
        get_recipe("demo"),
        ["placement.replica_resources={replica: 1}", "placement.shard_resources={ps: 1}"],
    )
    _driver, server, *replicas = bundles(cfg)
    assert server["ps"] == cfg.ps.num_shards + 1 and "replica" not in server
    assert len(replicas) == cfg.ps.num_replicas
    assert all(r["replica"] == 1 and "ps" not in r for r in replicas)
    total = sum(b["CPU"] for b in bundles(cfg))
    assert abs(total - trial_cpus(cfg)) < 1e-6


def test_grid_tries_every_value_where_choice_draws_at_random():
    from ray.tune.search.variant_generator import generate_variants

    assert parse_domain("optim.lr", "grid:0.003,0.01,0.03") == Grid((0.003, 0.01, 0.03))
    space = build_space(["optim.lr=grid:0.003,0.01,0.03"])
    assert space.trials(1) == 3 and space.trials(2) == 6
    assert "optim.lr=grid:0.003,0.01,0.03" in space.describe()
    # Tune's own variant generator expands the space exactly as a sweep's trials get it.
    lrs = [spec["optim"]["lr"] for _, spec in generate_variants(space.to_tune())]
    assert lrs == [0.003, 0.01, 0.03]
    assert build_space(["optim.lr=choice:0.003,0.01,0.03"]).trials(3) == 3
    with pytest.raises(ConfigError, match="grid:A,B"):
        parse_domain("optim.lr", "grid:")
    with pytest.raises(ConfigError, match=r"optim.lr=grid:0,0.01"):
        build_space(["optim.lr=grid:0,0.01"])  # every value must make a valid job
