"""The simulator against cases with a closed form: one replica with and without overlap, the
shard's and the PS NIC's saturation, an M/D/1 queue at the shard, a straggler, preemptions and
the averager's reads."""

from __future__ import annotations

import dataclasses

import pytest

from distinception.plan.sim import MIB, Profile, Setup, simulate

BASE = Profile(
    "test",
    step_s=0.1,
    batch=32,
    params=1_000_000,
    apply_fixed_s=0.002,
    apply_s_per_mib=0.001,
    rpc_s=0.0005,
)
#: A link so fast that transfers take no time to speak of.
FAST = 1e9


def _profile(**changes) -> Profile:
    return dataclasses.replace(BASE, **changes)


def test_one_replica_that_may_not_run_ahead_waits_for_the_whole_round_trip():
    setup = Setup(replicas=1, link_gbps=10, max_lag=0)
    res = simulate(BASE, setup, pushes=200)
    transfer = BASE.params * 4 / (10e9 / 8)  # the whole vector through one NIC
    apply = BASE.apply_fixed_s + BASE.apply_s_per_mib * BASE.params * 4 / MIB
    period = BASE.step_s + 2 * (transfer + BASE.rpc_s) + apply
    assert res.images_per_s == pytest.approx(BASE.batch / period, rel=1e-9)
    assert set(res.staleness) == {0}


def test_one_replica_with_a_step_of_lag_computes_all_the_time_one_version_behind():
    res = simulate(BASE, Setup(replicas=1, link_gbps=10, max_lag=1), pushes=200)
    assert res.images_per_s == pytest.approx(BASE.batch / BASE.step_s, rel=1e-9)
    assert res.efficiency == pytest.approx(1.0)
    assert set(res.staleness) == {1}  # as the shards measure it on a real single replica
    assert res.bottleneck == "replica compute"


def test_shards_saturate_at_one_push_per_apply_whatever_the_replicas():
    profile = _profile(step_s=0.01, apply_fixed_s=0.01, apply_s_per_mib=0.0, rpc_s=0.0)
    res = simulate(profile, Setup(replicas=32, shards=4, link_gbps=FAST), pushes=2000)
    assert res.updates_per_s == pytest.approx(100.0, rel=0.01)
    assert res.bottleneck == "shard apply"
    assert res.utilization["shard apply"] == pytest.approx(1.0, abs=0.01)
    # More PS nodes do not help: every push goes to every shard.
    wider = simulate(profile, Setup(replicas=32, shards=16, ps_nodes=4, link_gbps=FAST), 2000)
    assert wider.updates_per_s == pytest.approx(100.0, rel=0.01)


def test_a_ps_nic_saturates_at_its_bandwidth_and_more_nodes_add_theirs():
    profile = _profile(step_s=0.01, apply_fixed_s=0.0, apply_s_per_mib=0.0, rpc_s=0.0)
    per_push_s = profile.params * 4 / (10e9 / 8)  # the vector through one PS NIC
    for nodes in (1, 4):
        setup = Setup(replicas=64, shards=nodes, ps_nodes=nodes, link_gbps=10)
        res = simulate(profile, setup, pushes=3000)
        assert res.updates_per_s == pytest.approx(nodes / per_push_s, rel=0.02)
        assert res.bottleneck in ("PS NIC in", "PS NIC out")


def test_waits_at_a_shard_fed_by_many_replicas_are_those_of_an_md1_queue():
    """Exponential compute times from 200 replicas make nearly Poisson arrivals at a shard with
    a fixed apply time: the Pollaczek-Khinchine mean wait, rho * a / (2 (1 - rho))."""
    a = 0.001
    profile = _profile(step_s=200 * a / 0.5, apply_fixed_s=a, apply_s_per_mib=0.0, rpc_s=0.0)
    setup = Setup(replicas=200, link_gbps=FAST, max_lag=0, step_cv=1.0)
    res = simulate(profile, setup, pushes=60_000, seed=3)
    rho = res.utilization["shard apply"]
    assert 0.4 < rho < 0.55
    assert res.apply_wait_s == pytest.approx(rho * a / (2 * (1 - rho)), rel=0.1)


def test_a_straggler_costs_only_its_own_share():
    profile = _profile(apply_fixed_s=0.0, apply_s_per_mib=0.0, rpc_s=0.0)
    setup = Setup(replicas=4, link_gbps=FAST, stragglers=1, straggler_factor=2.0)
    res = simulate(profile, setup, pushes=2000)
    assert res.efficiency == pytest.approx((3 + 0.5) / 4, rel=0.01)


def test_preempted_replicas_lose_the_time_they_are_down():
    profile = _profile(step_s=1.0, apply_fixed_s=0.0, apply_s_per_mib=0.0, rpc_s=0.0)
    setup = Setup(replicas=4, link_gbps=FAST, preemptions_per_hour=60, restart_s=20)
    res = simulate(profile, setup, pushes=20_000, seed=1)
    # Up 60 s on average, then down 20 s: 3/4 of the time, less the step cut short each time.
    assert res.efficiency == pytest.approx(0.75 - 0.5 / 80, abs=0.03)


def test_the_averagers_reads_use_the_ps_nics():
    profile = _profile(apply_fixed_s=0.0, apply_s_per_mib=0.0)
    alone = simulate(profile, Setup(replicas=1, link_gbps=10), pushes=500)
    read_s = profile.params * 4 / (10e9 / 8)
    reading = simulate(profile, Setup(replicas=1, link_gbps=10, averager_interval_s=0.05), 500)
    extra = reading.utilization["PS NIC out"] - alone.utilization["PS NIC out"]
    assert extra == pytest.approx(read_s / 0.05, rel=0.05)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Setup(replicas=0), "expected replicas >= 1"),
        (lambda: Setup(replicas=4, shards=2, ps_nodes=4), "shards >= ps_nodes"),
        (lambda: Setup(replicas=4, link_gbps=0), "link_gbps=0"),
        (lambda: Setup(replicas=4, stragglers=5), "stragglers=5: expected between 0 and"),
        (lambda: Setup(replicas=4, n_push=0), "n_push=0: expected an integer >= 1"),
        (lambda: _profile(step_s=0), "step_s=0: expected a number > 0"),
        (lambda: _profile(rpc_s=float("nan")), "rpc_s=nan"),
        (lambda: _profile(wire_bytes=3), "wire_bytes=3: expected 2 or 4"),
        (lambda: _profile(batch=0), "batch=0: expected an integer >= 1"),
    ],
)
def test_bad_settings_are_one_line(make, message):
    with pytest.raises(ValueError, match=message):
        make()
