"""The split of `ps` into optim/ps/averager/transport/placement: old keys still load, to the same
job and with a warning naming the new key; checks across sections fail in one line; saved
configs carry the new sections; a typo suggests the new name."""

import pytest
import yaml

from distinception.config import (
    MOVED,
    ConfigError,
    JobConfig,
    apply_overrides,
    from_dict,
    load_yaml,
)
from distinception.recipes import get_recipe
from distinception.tune.space import SearchSpace, Uniform, build_space

#: A valid value other than the default for every key that moved, under its new name.
VALUES = {
    "optim.optimizer": "adam",
    "optim.lr": 0.05,
    "optim.momentum": 0.5,
    "optim.weight_decay": 1e-3,
    "optim.lr_decay": 0.5,
    "optim.lr_decay_epochs": 2.0,
    "optim.warmup_examples": 100,
    "optim.clip_norm": 1.5,
    "averager.polyak": "ema",
    "averager.polyak_start": 7,
    "averager.ema_decay": 0.9,
    "averager.interval_s": 2.0,
    "transport.channel": "object_store",
    "transport.transfer_dtype": "bfloat16",
    "transport.compute_dtype": "bfloat16",
    "placement.replica_cpus": 2.0,
    "placement.replica_gpus": 1.0,
    "placement.shard_cpus": 0.5,
    "placement.averager_cpus": 0.5,
    "placement.replica_resources": {"replica": 1.0},
    "placement.shard_resources": {"ps": 1.0},
    "placement.max_replica_restarts": 0,
    "placement.max_shard_restarts": -1,
    "placement.elastic": True,
    "placement.min_replicas": 2,
    "placement.elastic_wait_s": 30.0,
}
OLD = sorted(MOVED)


def _nested(key: str, value):
    section, _, name = key.partition(".")
    return {section: {name: value}}


def test_every_moved_key_is_tested_and_lands_on_a_field():
    assert set(VALUES) == set(MOVED.values())
    fields = set(JobConfig().flat())
    assert all(new in fields or new.endswith("_resources") for new in MOVED.values())
    assert not any(old in fields for old in MOVED)


@pytest.mark.parametrize("old", OLD)
def test_an_old_key_in_a_mapping_loads_the_same_job_and_warns_with_the_new_key(old):
    new, value = MOVED[old], VALUES[MOVED[old]]
    with pytest.warns(DeprecationWarning, match=rf"{old} .*now {new}\b"):
        got = from_dict(_nested(old, value))
    assert got == from_dict(_nested(new, value))
    section, _, name = new.partition(".")
    assert getattr(getattr(got, section), name) == value


@pytest.mark.parametrize("old", OLD)
def test_an_old_key_in_a_yaml_file_loads_the_same_job_and_warns(tmp_path, old):
    new, value = MOVED[old], VALUES[MOVED[old]]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_nested(old, value)))
    with pytest.warns(DeprecationWarning, match=rf"now {new}\b"):
        got = load_yaml(path)
    assert got == from_dict(_nested(new, value)) != JobConfig()


@pytest.mark.parametrize("old", OLD)
def test_an_old_key_in_a_set_override_loads_the_same_job_and_warns(old):
    new, value = MOVED[old], VALUES[MOVED[old]]
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    with pytest.warns(DeprecationWarning, match=rf"now {new}\b"):
        got = apply_overrides(JobConfig(), [f"{old}={text}"])
    assert got == apply_overrides(JobConfig(), [f"{new}={text}"]) != JobConfig()


def _old_layout(cfg: JobConfig) -> dict:
    """`cfg` as a config.yaml (or a checkpoint's config) written before the split held it."""
    doc = cfg.to_dict()
    ps = dict(doc["ps"])
    for old, new in MOVED.items():
        section, _, name = new.partition(".")
        ps[old.partition(".")[2]] = doc[section][name]
    for section in {new.partition(".")[0] for new in MOVED.values()}:
        del doc[section]
    doc["ps"] = ps
    return doc


@pytest.mark.parametrize("recipe", ["demo", "paper", "digits", "tiny"])
def test_a_config_saved_before_the_split_loads_to_the_same_job(recipe):
    cfg = get_recipe(recipe)
    old = _old_layout(cfg)
    assert "lr" in old["ps"] and "optim" not in old
    with pytest.warns(DeprecationWarning):
        assert from_dict(old) == cfg
    with pytest.warns(DeprecationWarning):
        assert from_dict(yaml.safe_load(yaml.safe_dump(old))) == cfg


def test_a_checkpoint_written_before_the_split_resumes_with_the_same_job(tmp_path):
    import json

    from distinception.ps.control.checkpoints import load_progress_config

    cfg = apply_overrides(get_recipe("tiny"), ["optim.lr=0.03", "averager.interval_s=1"])
    (tmp_path / "progress.json").write_text(json.dumps({"config": _old_layout(cfg)}))
    with pytest.warns(DeprecationWarning, match="now optim.lr"):
        assert load_progress_config(str(tmp_path)) == cfg


def test_the_new_sections_are_in_a_saved_config_and_round_trip(tmp_path):
    cfg = apply_overrides(
        get_recipe("demo"),
        ["optim.lr=0.03", "transport.channel=object_store", "placement.replica_cpus=0.5"],
    )
    doc = yaml.safe_load(cfg.to_yaml())
    assert list(doc) == [
        "name",
        *("model", "data", "augment", "optim", "ps", "averager", "transport", "placement"),
        *("tracking", "run"),
    ]
    assert doc["optim"]["lr"] == 0.03 and "lr" not in doc["ps"]
    assert doc["transport"]["channel"] == "object_store" and "transport" not in doc["ps"]
    assert doc["averager"]["interval_s"] == 0.5 and doc["placement"]["replica_cpus"] == 0.5
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert load_yaml(path) == cfg
    # MLflow params come from `flat()`: the new names, never the old.
    flat = cfg.flat()
    assert flat["optim.lr"] == 0.03 and "ps.lr" not in flat


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["placement.min_replicas=3"],
            "placement.min_replicas=3: expected an integer in [1, ps.num_replicas=2]",
        ),
        (
            ["ps.num_replicas=4", "placement.min_replicas=4", "ps.num_replicas=3"],
            "placement.min_replicas=4: expected an integer in [1, ps.num_replicas=3]",
        ),
    ],
)
def test_a_check_across_sections_fails_in_one_line_naming_both(overrides, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(JobConfig(), overrides)
    assert str(err.value) == message


def test_a_check_across_sections_also_holds_over_separate_loads():
    cfg = apply_overrides(JobConfig(), ["ps.num_replicas=4", "placement.min_replicas=4"])
    with pytest.raises(ConfigError, match=r"^placement.min_replicas=4: .*ps.num_replicas=2\]$"):
        from_dict({"ps": {"num_replicas": 2}}, cfg)


@pytest.mark.parametrize(
    ("override", "hint"),
    [
        ("ps.lrr=0.1", "optim.lr"),
        ("ps.channel=auto", "transport.channel"),
        ("ps.interval_s=1", "averager.interval_s"),
        ("ps.min_replica=1", "placement.min_replicas"),
        ("ps.num_replica=1", "num_replicas"),
        ("optim.lrr=0.1", "lr"),
        ("optm.lr=0.1", "optim"),
    ],
)
def test_an_unknown_key_suggests_the_new_name_in_one_line(override, hint):
    with pytest.raises(ConfigError) as err:
        apply_overrides(JobConfig(), [override])
    text = str(err.value)
    assert f"(did you mean {hint!r}?)" in text and "\n" not in text


def test_a_key_given_both_old_and_new_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"^ps.lr: also given as optim.lr; expected only "):
        from_dict({"ps": {"lr": 0.1}, "optim": {"lr": 0.2}})


def test_old_keys_in_a_sweep_space_are_swept_under_their_new_name():
    with pytest.warns(DeprecationWarning, match="now optim.lr"):
        space = SearchSpace({"ps.lr": Uniform(0.01, 0.1)})
    assert list(space.domains) == ["optim.lr"]
    assert space.apply(JobConfig(), {"optim": {"lr": 0.05}}).optim.lr == 0.05
    with pytest.warns(DeprecationWarning, match="now optim.lr"):
        custom = build_space(["ps.lr=grid:0.01,0.02"])
    assert [k for k in custom.domains if k.endswith(".lr")] == ["optim.lr"]
    # A field fixed with `--set ps.lr=...` is not swept, under either name.
    assert "optim.lr" not in build_space(fixed=["ps.lr"]).domains
    # A sweep's sample written with the old key (an older ranked.json) still applies.
    with pytest.warns(DeprecationWarning):
        assert space.apply(JobConfig(), {"ps.lr": 0.03}).optim.lr == 0.03
