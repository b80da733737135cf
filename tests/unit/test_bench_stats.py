"""The statistics the benchmark tables report, checked against hand computations."""

import pytest

from distinception.bench.convergence import interval95, to_target, versus, versus_table


def test_interval95_is_students_t_half_width():
    # mean 2, sample std 1, n = 3: t(0.975, 2) = 4.3027 -> 4.3027 / sqrt(3)
    assert interval95([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / 3**0.5, rel=1e-5)
    # n = 5, std 1: t(0.975, 4) = 2.7764
    values = [0.0, 0.0, 1.0, 2.0, 2.0]  # sample std = 1
    assert interval95(values) == pytest.approx(2.776445 / 5**0.5, rel=1e-5)
    assert interval95([0.3]) == 0.0


def test_to_target_is_the_first_evaluation_at_or_below_it():
    curve = [(10.0, 1000, 0.8), (20.0, 2000, 0.4), (30.0, 3000, 0.2), (40.0, 4000, 0.3)]
    assert to_target(curve, 0.4) == (20.0, 2000)
    assert to_target(curve, 0.25) == (30.0, 3000)
    assert to_target(curve, 0.1) is None


def test_time_to_target_is_compared_seed_by_seed_and_a_reference_miss_counts_against_it():
    def run(*points):
        return [(s, 100 * s, e) for s, e in points]

    ps = [
        run((10.0, 0.5), (20.0, 0.1)),  # seed 0: 20 s
        run((10.0, 0.5), (30.0, 0.1)),  # seed 1: 30 s
        run((10.0, 0.5), (20.0, 0.3)),  # seed 2: never
        run((10.0, 0.5), (20.0, 0.4)),  # seed 3: never
    ]
    ddp = [
        run((10.0, 0.5), (40.0, 0.1)),  # 40 s: the PS at half
        run((10.0, 0.5), (20.0, 0.3)),  # never: the PS, which did, was first
        run((10.0, 0.1)),  # 10 s: DDP first
        run((10.0, 0.5)),  # neither: left out of the count
    ]
    ratios, first, either = versus(ps, ddp, 0.2)
    assert ratios == [0.5, None, None, None]
    assert (first, either) == (2, 3)
    # The mean times would read 25 s against DDP's 25 s, level; seed by seed the PS was first
    # twice in three.
    table = "\n".join(versus_table({"async PS, Polyak": ps, "sync DDP": ddp}, 0.2))
    assert "| async PS, Polyak | 20 / 30 / - / - | 0.50 / - / - / - | 0.50 ± 0.00 | 2/3 |" in table
    assert "| sync DDP | 40 / - / 10 / - |" in table
    # Without DDP the local loop is the reference; with neither there is no table.
    assert "over local's" in "\n".join(versus_table({"x": ps, "local": ddp}, 0.2))
    assert versus_table({"x": ps}, 0.2) == []


def test_a_table_names_its_data_by_a_digest_unless_it_is_too_large_to_read_again(
    tmp_path, monkeypatch
):
    from distinception.bench import common
    from distinception.data.shards import DatasetWriter, open_manifest

    path = str(tmp_path / "set")
    with DatasetWriter(path, ["a", "b"]) as writer:
        for i in range(6):
            writer.write("train", f"img{i}".encode(), i % 2, f"k{i}")
    digest = open_manifest(path).digest()
    assert common.describe_data(path) == f"`{path}` (bytes {digest})"
    monkeypatch.setattr(common, "HASHED_BYTES", 100)
    assert common.describe_data(path) == f"`{path}` (0.0 GiB, not hashed)"
