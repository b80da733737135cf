"""`distinception bench staleness` and `bench updates` as a user types them, at the tiniest
sizes: the staleness the replicas see under each policy and each update rule."""

from __future__ import annotations

import pytest
from as_typed import distinception
from bench_tables import png, table_rows

from distinception.bench.choices import UPDATES
from distinception.config import parse_momentum_correction
from distinception.ps.policies import explicit_momentum

pytestmark = pytest.mark.integration


def test_bench_staleness_as_a_user_types_it(tmp_path):
    """`--replicas 1` runs 1 and 2 replicas, each under every policy given; on one shard (what
    is measured is per shard, and every actor process costs seconds of start-up)."""
    args = ("--replicas", "1", "--quick", "--policies", "none,bound:0", "--budget", "640")
    args += ("--set", "ps.num_shards=1")
    distinception("bench", "staleness", *args, "--out", str(tmp_path))
    text = (tmp_path / "staleness.md").read_text()
    assert f"Command: `distinception bench staleness {' '.join(args)}`" in text
    assert "Recipe `tiny` (1 shard), 640 examples per run" in text
    cells = {(r[0], r[1]): r for r in table_rows(text, "1 |") + table_rows(text, "2 |")}
    assert set(cells) == {(n, p) for n in ("1", "2") for p in ("none", "bound:0")}
    # One replica is never stale; two are, unless a bound of 0 refuses their stale pushes.
    assert cells["1", "none"][2] == "0.00" and cells["1", "bound:0"][4] == "0"
    assert float(cells["2", "none"][2]) > 0
    assert cells["2", "bound:0"][5] == "0" and float(cells["2", "bound:0"][6].rstrip("%")) > 0
    png(str(tmp_path / "staleness.png"))


def test_bench_updates_as_a_user_types_it(tmp_path):
    """The quickest form of `distinception bench updates`: three update rules, one seed; on one
    shard (the momentum each shard ends with is what is read). The rules are named, not the
    recipe's `default`, so what is checked does not move with the recipe."""
    distinception(
        *("bench", "updates", "--quick", "--replicas", "2"),
        *("--updates", "previous,half-mc,loop-mc"),
        *("--seeds", "1", "--set", "ps.num_shards=1", "--out", str(tmp_path)),
    )
    table = (tmp_path / "updates.md").read_text()
    rows = {
        line.split("|")[2].strip(): line for line in table.splitlines() if line.startswith("| 2 ")
    }
    assert set(rows) == {"previous", "half-mc", "loop-mc"}
    cells = {name: [c.strip() for c in row.split("|")[1:-1]] for name, row in rows.items()}
    # The previous update keeps the full momentum; half the correction lowers it from the
    # staleness two replicas with one step of lag measure: about 1.5 versions, an implicit
    # momentum of 0.6, so 0.6 under half (0.3 under the whole). The shard's meter weights recent
    # pushes more than the table's mean does, hence the tolerance.
    assert cells["previous"][6] == "0.90"
    staleness = float(cells["half-mc"][5])
    assert staleness > 0.5
    _, share = parse_momentum_correction(UPDATES["half-mc"]["ps.momentum_correction"])
    assert share == 0.5
    expected = explicit_momentum(0.9, staleness, share=share)
    assert abs(float(cells["half-mc"][6]) - expected) < 0.06, (cells["half-mc"], expected)
    # The closed loop starts at the full correction; measuring little beyond the explicit
    # momentum on these steps, it takes off less of the implicit one push by push, so it ends
    # well above where the full correction would hold the momentum (and below 0.9).
    staleness = float(cells["loop-mc"][5])
    full = explicit_momentum(0.9, staleness)
    assert full + 0.1 < float(cells["loop-mc"][6]) < 0.9, (cells["loop-mc"], full)
    png(str(tmp_path / "updates.png"))
