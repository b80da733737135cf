import pytest

from distinception.config import (
    AUGMENT_PRESETS,
    ConfigError,
    JobConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)
from distinception.recipes import RECIPES, get_recipe


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_named_recipes_are_valid_and_round_trip_through_yaml(name, tmp_path):
    cfg = get_recipe(name)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert load_yaml(path) == cfg


def test_overrides_are_typed_from_yaml_scalars():
    cfg = apply_overrides(
        get_recipe("demo"),
        ["ps.num_replicas=4", "optim.lr=1e-3", "augment.flip=false", "ps.staleness=bound:2"],
    )
    assert cfg.ps.num_replicas == 4 and cfg.optim.lr == 0.001
    assert cfg.augment.flip is False and cfg.ps.staleness == "bound:2"


def test_recipe_preset_by_name_then_field_override():
    cfg = apply_overrides(JobConfig(), ["augment=caffe", "augment.flip=false"])
    assert cfg.augment.area_min == AUGMENT_PRESETS["caffe"].area_min
    assert cfg.augment.flip is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.widht=2"], "model.widht: unknown key (did you mean 'width'?)"),
        (["model.width=-1"], "model.width=-1.0: expected a number in (0, 4]"),
        (["model.variant=resnet"], "model.variant='resnet': expected one of faithful, bn"),
        (["ps.num_replicas=two"], "ps.num_replicas='two': expected an integer"),
        (["ps.staleness=bound:x"], "ps.staleness='bound:x': expected none, scale or bound:K"),
        (["augment.area_min=0.9", "augment.area_max=0.5"], "augment.area_max=0.5"),
        (["augment.interpolation=lanczos"], "augment.interpolation='lanczos'"),
        (["run.epochs=0", "run.max_examples=0", "run.max_seconds=0"], "run.epochs=0.0"),
        (["augment=fancy"], "augment='fancy': expected one of paper, caffe, none"),
        (["nonsense.key=1"], "nonsense: unknown key"),
        (["novalue"], "--set 'novalue': expected section.key=value"),
        (["model.aux=maybe"], "model.aux='maybe': expected true or false"),
        (["optim.lr=.nan"], "optim.lr=nan: expected a finite number"),
        (["tracking.tracking_uri=/tmp/mlruns"], "tracking.tracking_uri='/tmp/mlruns': expected"),
        (["tracking.tracking_uri=file:///tmp/m"], "MLflow no longer writes to a plain directory"),
        (["tracking.tracking_uri=C:/runs"], "tracking.tracking_uri='C:/runs': expected empty"),
    ],
)
def test_bad_values_fail_with_one_line_naming_field_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(get_recipe("demo"), overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_bad_yaml_file_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="expected an existing YAML file"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        from_dict({"model": 3})


def test_flat_params_cover_every_field():
    flat = get_recipe("paper").flat()
    assert flat["model.variant"] == "faithful"
    assert flat["optim.momentum"] == 0.9
    assert flat["optim.lr_decay"] == 0.96 and flat["optim.lr_decay_epochs"] == 8.0
    assert flat["augment.area_min"] == 0.08
    assert len(flat) > 50


@pytest.mark.parametrize(
    ("run", "budget"),
    [
        ({"epochs": 2.5, "max_examples": 0}, 250),  # a fraction of an epoch rounds up
        ({"epochs": 2.5, "max_examples": 120}, 120),  # the smaller budget wins
        ({"epochs": 0.0, "max_examples": 120}, 120),
        ({"epochs": 0.0, "max_examples": 0, "max_seconds": 5.0}, 0),  # only a time budget
    ],
)
def test_one_example_budget_for_the_coordinator_tune_and_asha(run, budget):
    assert from_dict({"run": run}).run.example_budget(100) == budget
