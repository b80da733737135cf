"""Run names a user sees in the MLflow UI when they did not choose one."""

from distinception.config import from_dict
from distinception.recipes import get_recipe
from distinception.tracking import default_run_name


def test_a_default_run_name_says_recipe_data_and_model():
    demo = get_recipe("demo")
    builtin = "/home/u/.cache/distinception/generated-v3-c10-n500-v100-s64-seed0-74abe184"
    assert default_run_name(demo, builtin) == "demo-builtin-bn0.25-64px"
    other = from_dict({"model": {"width": 1.0, "input_size": 32}}, demo)
    assert default_run_name(other, "s3://bucket/flowers/") == "demo-flowers-bn1-32px"
    digits = get_recipe("digits")
    assert default_run_name(digits, "/x/digits") == "digits-bn0.5-32px"
