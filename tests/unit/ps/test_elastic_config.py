"""The elastic-replica settings are checked where they enter, like every other value."""

from __future__ import annotations

import pytest

from distinception.config import ConfigError, JobConfig, apply_overrides


def test_resources_parse_from_the_command_line():
    cfg = apply_overrides(
        JobConfig(),
        ["ps.elastic=true", "ps.replica_resources={replica: 1}", "ps.shard_resources={ps: 0.5}"],
    )
    assert cfg.ps.elastic and cfg.ps.replica_resources == {"replica": 1.0}
    assert cfg.ps.shard_resources == {"ps": 0.5}
    assert cfg.flat()["ps.replica_resources.replica"] == 1.0
    assert JobConfig().ps.replica_resources == {}  # off by default: nothing changes


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("ps.min_replicas=3", "ps.min_replicas=3: expected an integer in [1, num_replicas=2]"),
        ("ps.min_replicas=0", "ps.min_replicas=0"),
        ("ps.replica_resources={CPU: 1}", "CPU/GPU/memory have their own fields"),
        ("ps.replica_resources={replica: -1}", "amounts >= 0"),
        ("ps.shard_resources=ps", "ps.shard_resources='ps': expected a mapping"),
        ("ps.elastic_wait_s=0", "ps.elastic_wait_s=0.0: expected a number > 0"),
    ],
)
def test_bad_elastic_values_name_field_and_expectation(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(JobConfig(), [override])
    assert message in str(err.value)
