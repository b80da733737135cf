"""The link `bench nodes` gives the plan model: a latency and a bandwidth through two transfers."""

from __future__ import annotations

import pytest

from distinception.bench.nodes import fit_link

MIB = 2**20


def test_the_fitted_link_gives_back_the_latency_and_bandwidth_of_a_line():
    latency, gbps = 0.009, 5.0

    def seconds(nbytes: int) -> float:
        return latency + nbytes * 8 / 1e9 / gbps

    fitted_gbps, fitted_latency = fit_link((MIB, seconds(MIB)), (51 * MIB, seconds(51 * MIB)))
    assert fitted_gbps == pytest.approx(gbps, rel=1e-9)
    assert fitted_latency == pytest.approx(latency, rel=1e-9)


def test_a_large_object_no_slower_than_a_small_one_is_all_latency():
    gbps, latency = fit_link((MIB, 0.010), (51 * MIB, 0.009))
    assert gbps == 1e3 and latency == pytest.approx(0.010 - MIB * 8 / 1e12)
