"""Run names a user sees in the MLflow UI when they did not choose one."""

from distinception.config import from_dict
from distinception.recipes import get_recipe
from distinception.tracking import chart_metrics, chart_name, default_run_name


def test_a_default_run_name_says_recipe_data_and_model():
    demo = get_recipe("demo")
    builtin = "/home/u/.cache/distinception/generated-v3-c10-n500-v100-s64-seed0-74abe184"
    assert default_run_name(demo, builtin) == "demo-builtin-bn0.25-64px"
    other = from_dict({"model": {"width": 1.0, "input_size": 32}}, demo)
    assert default_run_name(other, "s3://bucket/flowers/") == "demo-flowers-bn1-32px"
    digits = get_recipe("digits")
    assert default_run_name(digits, "/x/digits") == "digits-bn0.5-32px"


def test_metrics_that_belong_together_share_a_prefix():
    assert chart_name("loss") == "train/loss"
    assert chart_name("lr") == "train/lr"
    assert chart_name("polyak_top1_error") == "val/polyak_top1_error"
    assert chart_name("final_raw_top5_error") == "val/final_raw_top5_error"
    assert chart_name("staleness_p95") == "ps/staleness_p95"
    assert chart_name("replicas") == "ps/replicas"
    assert chart_name("fault_shard_restarts") == "faults/shard_restarts"
    assert chart_name("system/cpu_utilization_percentage") == "system/cpu_utilization_percentage"


def test_the_headline_error_is_the_served_weights():
    m = {"polyak_top1_error": 0.1, "raw_top1_error": 0.3, "polyak_top5_error": 0.0}
    assert chart_metrics(m, polyak=True)["val/top1_error"] == 0.1
    assert chart_metrics(m, polyak=False)["val/top1_error"] == 0.3
    assert "val/top5_error" not in chart_metrics(m, polyak=False)  # no raw top-5 reported
    final = chart_metrics({"final_polyak_top1_error": 0.2, "loss": 1.0}, polyak=True)
    assert final == {
        "val/final_polyak_top1_error": 0.2,
        "val/final_top1_error": 0.2,
        "train/loss": 1.0,
    }
