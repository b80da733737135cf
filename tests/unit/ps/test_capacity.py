"""The capacity check's decisions, driven by recorded observations of a cluster and its
autoscaler (the real heads are in tests/integration/test_elastic.py and test_submit.py)."""

from __future__ import annotations

import pytest

from distinception.api import load_config
from distinception.ps.capacity import (
    BOOT_GRACE_SECONDS,
    QUIET_SECONDS,
    STALL_SECONDS,
    STALL_UPDATES,
    AutoscalerStatus,
    CapacityWait,
    actor_bundles,
    actor_demand,
    booting,
)

NEED = {"CPU": 4.0, "replica": 3.0}


def status(
    t: float, launching: int = 0, booting: int = 0, requested: bool = True, state="setting-up"
):
    nodes = {f"10.0.0.{i}": state for i in range(booting)}
    return AutoscalerStatus(
        time=t, readonly=False, requested=requested, launching=launching, booting=nodes, failed=0
    )


def test_bundles_are_one_per_actor_and_sum_to_the_demand():
    cfg = load_config(
        "tiny",
        overrides=[
            "ps.num_replicas=3",
            "ps.num_shards=2",
            "placement.replica_cpus=1",
            "placement.shard_cpus=0.25",
            "placement.averager_cpus=0.5",
            "placement.replica_resources={replica: 1}",
            "placement.shard_resources={ps: 1}",
        ],
    )
    bundles = actor_bundles(cfg)
    assert bundles.count({"CPU": 0.25, "ps": 1.0}) == 2
    assert bundles.count({"CPU": 0.5, "ps": 1.0}) == 1
    assert bundles.count({"CPU": 1.0, "replica": 1.0}) == 3
    assert len(bundles) == 6  # no GPU key where none is asked
    assert actor_demand(cfg) == {"CPU": 4.0, "ps": 3.0, "replica": 3.0}
    assert actor_demand(cfg, replicas=1)["replica"] == 1.0


def test_waits_while_the_cluster_grows_and_returns_when_it_fits():
    wait = CapacityWait(NEED, started=0.0)
    assert wait.observe({"CPU": 1}, status(0.5, launching=2), 1.0) is None
    assert wait.observe({"CPU": 2, "replica": 1}, status(1.5), 2.0) is None
    assert wait.observe({"CPU": 4, "replica": 3}, status(2.5), 3.0) == "fits"


def test_gives_up_only_after_several_updates_and_seconds_without_progress():
    wait = CapacityWait(NEED, started=0.0)
    assert wait.observe({"CPU": 2, "replica": 1}, status(0.0, launching=1), 0.0) is None
    # The same update read again is not a new update, however long it is read.
    for now in range(1, 30):
        assert wait.observe({"CPU": 2, "replica": 1}, status(0.0), float(now)) is None
    verdicts = [
        wait.observe({"CPU": 2, "replica": 1}, status(30.0 + i), 30.0 + i)
        for i in range(STALL_UPDATES)
    ]
    assert verdicts[:-1] == [None] * (STALL_UPDATES - 1) and verdicts[-1] == "stuck"


def test_nodes_launching_or_booting_or_resources_growing_reset_the_stall():
    wait = CapacityWait(NEED, started=0.0)
    now = 0.0
    for i in range(3 * STALL_UPDATES):
        now = float(i) * 5
        booting_now = 1 if i % STALL_UPDATES == STALL_UPDATES - 1 else 0
        assert wait.observe({"CPU": 2}, status(now, booting=booting_now), now) is None
    # A new node's resources count as progress too.
    for _ in range(STALL_UPDATES - 1):
        now += 5
        assert wait.observe({"CPU": 2}, status(now), now) is None
    now += 5
    assert wait.observe({"CPU": 3}, status(now), now) is None
    assert now - wait.last_progress < STALL_SECONDS


def test_a_node_that_never_reports_a_setup_step_counts_as_booting_for_a_grace_period():
    """A fake-provider node that died before it joined stays "uninitialized" for good."""
    wait = CapacityWait(NEED, started=0.0)
    stuck = None
    now = 0.0
    while stuck is None and now < 10 * BOOT_GRACE_SECONDS:
        stuck = wait.observe({"CPU": 2}, status(now, booting=1, state="uninitialized"), now)
        if now < BOOT_GRACE_SECONDS:
            assert stuck is None
        now += 1.0
    assert stuck == "stuck"
    assert BOOT_GRACE_SECONDS + STALL_SECONDS <= now <= BOOT_GRACE_SECONDS + 2 * STALL_SECONDS
    # One with a setup step is on its way however long it takes.
    wait = CapacityWait(NEED, started=0.0)
    for i in range(int(10 * BOOT_GRACE_SECONDS)):
        assert wait.observe({"CPU": 2}, status(float(i), booting=1), float(i)) is None


def test_no_status_or_an_unseen_request_never_gives_up():
    wait = CapacityWait(NEED, started=0.0)
    for i in range(100):
        assert wait.observe({"CPU": 1}, None, float(i)) is None
    wait = CapacityWait(NEED, started=0.0)
    for i in range(100):
        assert wait.observe({"CPU": 1}, status(float(i), requested=False), float(i)) is None


def test_progress_lines_name_each_resource_and_the_nodes_coming_without_repeating():
    wait = CapacityWait(NEED, started=0.0)
    first = wait.line({"CPU": 1}, status(0, launching=2, booting=1), 2.0)
    assert first == (
        "distinception: waiting for the autoscaler: CPU 1/4, replica 0/3; "
        "nodes 2 launching, 1 booting (2 s)"
    )
    assert wait.line({"CPU": 1}, status(1, launching=2, booting=1), 3.0) == ""
    assert wait.line({"CPU": 1}, status(2, launching=2, booting=1), 2.0 + QUIET_SECONDS)
    assert wait.line({"CPU": 2, "replica": 1}, None, 40.0).endswith("CPU 2/4, replica 1/3 (40 s)")


@pytest.mark.parametrize(
    ("pending", "active", "nodes", "expected"),
    [
        # A cloud: the head and two workers up, two more VMs booting.
        (
            [("10.0.0.5", "w", "setting-up"), ("10.0.0.6", "w", "waiting-for-ssh")],
            3,
            [
                {
                    "Alive": True,
                    "NodeManagerAddress": "10.0.0.1",
                    "Resources": {"node:__internal_head__": 1},
                }
            ]
            + [
                {"Alive": True, "NodeManagerAddress": f"10.0.0.{i}", "Resources": {}}
                for i in (2, 3)
            ],
            {"10.0.0.5": "setting-up", "10.0.0.6": "waiting-for-ssh"},
        ),
        # The fake local provider: three workers joined, their entries stuck "uninitialized".
        (
            [(f"fff{i}", "replica_node", "uninitialized") for i in range(3)],
            0,
            [
                {
                    "Alive": True,
                    "NodeManagerAddress": "192.0.2.2",
                    "Resources": {"node:__internal_head__": 1},
                }
            ]
            + [{"Alive": True, "NodeManagerAddress": "192.0.2.2", "Resources": {}}] * 3,
            {},
        ),
        # A dead node does not count as joined.
        (
            [("10.0.0.5", "w", "setting-up")],
            1,
            [{"Alive": False, "NodeManagerAddress": "10.0.0.5", "Resources": {}}],
            {"10.0.0.5": "setting-up"},
        ),
    ],
)
def test_booting_counts_pending_nodes_that_have_not_joined(pending, active, nodes, expected):
    assert booting(pending, active, nodes) == expected
