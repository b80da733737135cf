"""The elastic-replica settings are checked where they enter, like every other value."""

from __future__ import annotations

import pytest

from distinception.config import ConfigError, JobConfig, apply_overrides


def test_resources_parse_from_the_command_line():
    cfg = apply_overrides(
        JobConfig(),
        [
            "placement.elastic=true",
            "placement.replica_resources={replica: 1}",
            "placement.shard_resources={ps: 0.5}",
        ],
    )
    assert cfg.placement.elastic and cfg.placement.replica_resources == {"replica": 1.0}
    assert cfg.placement.shard_resources == {"ps": 0.5}
    assert cfg.flat()["placement.replica_resources.replica"] == 1.0
    assert JobConfig().placement.replica_resources == {}  # off by default: nothing changes


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "placement.min_replicas=3",
            "placement.min_replicas=3: expected an integer in [1, ps.num_replicas=2]",
        ),
        ("placement.min_replicas=0", "placement.min_replicas=0"),
        ("placement.replica_resources={CPU: 1}", "CPU/GPU/memory have their own fields"),
        ("placement.replica_resources={replica: -1}", "amounts >= 0"),
        ("placement.shard_resources=ps", "placement.shard_resources='ps': expected a mapping"),
        ("placement.elastic_wait_s=0", "placement.elastic_wait_s=0.0: expected a number > 0"),
    ],
)
def test_bad_elastic_values_name_field_and_expectation(override, message):
    with pytest.raises(ConfigError) as err:
        apply_overrides(JobConfig(), [override])
    assert message in str(err.value)
