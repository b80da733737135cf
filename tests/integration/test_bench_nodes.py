"""`distinception bench nodes` as a user types it, at the smallest sizes: a Ray cluster of three
nodes on this machine, the round trip of the full faithful vector to shards on other nodes,
jobs against shards on one PS node and on two, and the plan model's prediction of each job."""

from __future__ import annotations

import math

import pytest
from as_typed import distinception
from bench_tables import png, table_rows

pytestmark = pytest.mark.integration


def test_bench_nodes_as_a_user_types_it(tmp_path):
    args = ("--replicas", "2", "--quick", "--recipe", "tiny", "--seconds", "3")
    proc = distinception("bench", "nodes", *args, "--out", str(tmp_path))
    text = (tmp_path / "nodes.md").read_text()
    assert text.strip() in proc.stdout  # the table printed is the table written
    assert f"Command: `distinception bench nodes {' '.join(args)}`" in text

    # The round trips crossed node boundaries: every shard off the driver's node, on one PS
    # node, then spread over both.
    rows = table_rows(text, "1 PS node") + table_rows(text, "2 PS nodes")
    trips = {r[0]: r for r in rows if len(r) == 9}
    assert [r[2] for r in trips.values()] == ["fp32", "fp32"], trips
    assert trips["1 PS node"][1] == "1 (4 of 4 off the head)", trips
    assert trips["2 PS nodes"][1] == "2 (4 of 4 off the head)", trips
    for row in trips.values():
        ratio = float(row[6].rstrip("x"))
        assert 1 < ratio < 10_000 and math.isfinite(ratio), row

    # One job per layout at 2 replicas, measured and modelled; two replicas with one step of
    # lag are stale, and the model, given the measured costs, says so too.
    runs = [r for r in rows if len(r) == 12]
    assert sorted((r[0], r[1]) for r in runs) == [("1 PS node", "2"), ("2 PS nodes", "2")]
    for row in runs:
        images, staleness = float(row[2]), float(row[7])
        model_images, model_staleness = float(row[8]), float(row[10])
        assert images > 0 and model_images > 0, row
        assert staleness > 0 and model_staleness > 0, row
    png(str(tmp_path / "nodes.png"))
    # The costs it measured, as a profile that `distinception plan` reads.
    proc = distinception(
        "plan", "--profile", str(tmp_path / "nodes-profile.yaml"), "--replicas", "2", "--json"
    )
    assert '"replicas": 2' in proc.stdout
