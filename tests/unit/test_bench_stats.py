"""The statistics the benchmark tables report, checked against hand computations."""

import pytest

from distinception.bench.convergence import interval95, to_target


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
