"""Table 1 reproduced by measurement: params and multiply-adds per row against the csv."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distinception.model import GoogLeNet
from distinception.model.accounting import format_summary, load_table1, summarize

ROW_NAMES = ["conv1", "conv2", "3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b", "fc"]


@pytest.fixture(scope="module")
def faithful() -> dict:
    return summarize()


@pytest.fixture(scope="module")
def bn() -> dict:
    return summarize("bn")


def test_rows_match_the_exact_csv_columns(faithful: dict):
    csv_rows = load_table1()
    assert [row["name"] for row in faithful["rows"]] == ROW_NAMES
    for row, ref in zip(faithful["rows"], csv_rows, strict=True):
        assert row["params"] == ref.exact_params, row["name"]
        assert row["macs"] == ref.exact_macs, row["name"]
        assert (row["out_hw"], row["out_depth"]) == (ref.out_hw, ref.out_depth), row["name"]
        assert row["exact_params"] == ref.exact_params
        assert row["paper_params_k"] == ref.paper_params_k
        assert row["paper_ops_m"] == ref.paper_ops_m
    assert [row["out_hw"] for row in faithful["rows"]] == [112, 56, 28, 28] + [14] * 5 + [7, 7, 1]
    conv1 = faithful["rows"][0]
    assert (conv1["params"], conv1["macs"]) == (9_472, 118_013_952)
    assert (conv1["paper_params_k"], conv1["paper_ops_m"]) == (2.7, 34)


def test_totals(faithful: dict):
    totals = faithful["totals"]
    assert totals["params_no_aux"] == 6_998_552
    assert totals["params_with_aux"] == 13_378_280
    assert totals["aux_params"] == [3_188_840, 3_190_888]
    assert totals["macs"] == 1_582_671_872
    # The rows account for every multiply-add of the inference pass.
    assert sum(row["macs"] for row in faithful["rows"]) == totals["macs"]
    assert sum(row["params"] for row in faithful["rows"]) == totals["params_no_aux"]
    assert totals["paper_params_k"] == pytest.approx(6797.7)
    assert totals["paper_ops_m"] == pytest.approx(1502)
    # conv 1x1 128 on 4x4 + FC 2048x1024 + classifier 1024x1000
    assert totals["aux_macs"][0] == 16 * 512 * 128 + 2048 * 1024 + 1024 * 1000


def test_notes_explain_conv1(faithful: dict):
    conv1 = [note for note in faithful["notes"] if note.startswith("conv1")]
    assert len(conv1) == 1
    for fact in ("depthwise-separable", "multiplier 8", "2,712", "34.0M", "9,472", "118M"):
        assert fact in conv1[0]
    assert any("5x5/3" in note for note in faithful["notes"])


def test_format_summary_shows_ours_beside_the_papers(faithful: dict):
    text = format_summary(faithful)
    for value in ("6,998,552", "13,378,280", "1,582,671,872", "3,188,840", "3,190,888"):
        assert value in text
    assert "6797.7" in text and "1502" in text
    assert "DIFFERS" not in text
    assert text.count(" ok") == len(ROW_NAMES)
    assert "depthwise-separable" in text
    lines = text.splitlines()
    table = lines[lines.index("") + 1 :]
    header, rule = table[0], table[1]
    # Columns line up: every numeric cell ends where its header rule ends.
    ends = [
        i for i, ch in enumerate(rule) if ch == "-" and (i + 1 == len(rule) or rule[i + 1] == " ")
    ]
    row = next(line for line in table if line.startswith("4d"))
    for end in ends[1:-1]:
        assert row[end] != " ", (row, end)
    assert header.startswith("row")


def test_format_summary_flags_a_mismatch(faithful: dict):
    broken = {**faithful, "rows": [dict(r) for r in faithful["rows"]]}
    broken["rows"][3]["params"] += 1
    assert "DIFFERS" in format_summary(broken)


def test_bn_variant_counts_differ_and_are_sane(faithful: dict, bn: dict):
    assert bn["variant"] == "bn"
    model = GoogLeNet(variant="bn")
    for (name, module), ours, theirs in zip(
        model.table1_modules(), bn["rows"], faithful["rows"], strict=True
    ):
        bn_channels = sum(m.num_features for m in module.modules() if isinstance(m, nn.BatchNorm2d))
        # BN's weight and bias replace the conv bias: one more parameter per channel.
        assert ours["params"] - theirs["params"] == bn_channels, name
        assert ours["macs"] == theirs["macs"], name  # BN is not a multiply-add
        assert ours["paper_params_k"] is None and ours["exact_macs"] is None
    assert bn["totals"]["params_no_aux"] == 7_005_832
    assert bn["totals"]["params_with_aux"] == 13_385_816
    assert bn["totals"]["macs"] == faithful["totals"]["macs"]
    assert bn["totals"]["paper_params_k"] is None
    assert any("bn variant" in note for note in bn["notes"])
    assert "DIFFERS" not in format_summary(bn)


def test_small_build_is_measured_without_paper_columns():
    summary = summarize("faithful", input_size=32, width=0.25, num_classes=10)
    rows = summary["rows"]
    assert [r["out_hw"] for r in rows] == [16, 8, 4, 4, 2, 2, 2, 2, 2, 1, 1, 1]
    assert rows[-1]["out_depth"] == 10
    assert all(r["paper_ops_m"] is None and r["exact_params"] is None for r in rows)
    assert sum(r["macs"] for r in rows) == summary["totals"]["macs"] > 0
    assert any("adaptively" in note for note in summary["notes"])
    assert "32x32" in format_summary(summary)


def test_summarize_leaves_the_global_random_stream_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    summarize("bn", input_size=32, width=0.125)
    torch.testing.assert_close(torch.rand(3), expected)


def test_summarize_refuses_inputs_below_32():
    with pytest.raises(ValueError, match="input_size"):
        summarize(input_size=31)
