"""The built-in set is one the demo's plain loop learns from its first examples.

BENCHMARKS.md ("The built-in set") measures it over seeds: the loop leaves chance within the
first 10% of the demo's budget (12,500 examples). Here one seed on the demo's own set must be
well off chance after 9,600. Version 2 of the generator, whose random hues hid the objects
from GoogLeNet under SGD, was still at chance (about 89% top-1 error) that late.
"""

from __future__ import annotations

import pytest

from distinception.bench.convergence import local_curve
from distinception.config import from_dict
from distinception.data.generated import shards_path
from distinception.data.shards import open_manifest
from distinception.recipes import get_recipe

pytestmark = pytest.mark.integration

#: Measured 0.446 for seed 0 (0.580 for seed 1); chance is 0.90, version 2 about 0.89.
BOUND = 0.7


def test_the_demos_plain_loop_leaves_chance_early(tmp_path):
    cfg = from_dict(
        {
            "data": {"cache_dir": str(tmp_path)},
            "run": {"seed": 0},
        },
        get_recipe("demo"),
    )
    data = shards_path(cfg.data)
    manifest = open_manifest(data)
    curve = local_curve(
        cfg, data, manifest.num_classes, 9600, 1, manifest.counts["train"], threads=2
    )
    err = curve[-1][2]
    assert err < BOUND, err
