"""Any classifier by `model.arch`: names checked before a job starts, models built with the data's
class count, a flat layout the parameter server can cut, and a summary for each."""

from __future__ import annotations

import sys
import types
import warnings
from collections import namedtuple

import pytest
import torch
from torch import nn

from distinception.config import ConfigError, ModelConfig, from_dict
from distinception.model import GoogLeNet, build_model, classifier_loss, describe_model
from distinception.model.accounting import count_params, format_summary, summarize_model
from distinception.model.archs import ASKS_FOR_INIT
from distinception.ps.averager import has_batchnorm
from distinception.ps.replica import ReplicaCore, build_flat_model
from distinception.recipes import get_recipe


@pytest.fixture
def user_module(monkeypatch):
    """A user's package with one builder, importable as `user_nets`."""
    module = types.ModuleType("user_nets")

    def small_cnn(num_classes: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, num_classes),
        )

    module.small_cnn = small_cnn
    module.not_a_model = lambda num_classes: "oops"
    monkeypatch.setitem(sys.modules, "user_nets", module)
    return module


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        # A misspelt torchvision name lists the names it is closest to.
        ("torchvision:resnet81", "a torchvision classification model (close: resnet18,"),
        ("torchvision:mobilenetv3", "(close: mobilenet_v2, mobilenet_v3_small, mobilenet_v3_"),
        # A user's builder that cannot be imported or found says why.
        ("user_netz:small_cnn", "importing user_netz failed: No module named 'user_netz'"),
        ("user_nets:smal_cnn", "a function of user_nets (close: small_cnn)"),
        # Not one of the three forms.
        ("resnet18", "googlenet, torchvision:NAME or package.module:function"),
        ("torchvision:", "googlenet, torchvision:NAME or package.module:function"),
    ],
)
def test_a_bad_arch_is_one_line_with_the_close_matches(user_module, arch, expected):
    with pytest.raises(ConfigError) as err:
        from_dict({"model": {"arch": arch}}, get_recipe("tiny"))
    message = str(err.value)
    assert message.startswith(f"model.arch={arch!r}: expected ") and "\n" not in message
    assert expected in message


def test_width_is_a_torchvision_width_mult_where_the_builder_has_one():
    mobile = build_model(ModelConfig(arch="torchvision:mobilenet_v3_small", width=0.5), 4)
    full = build_model(ModelConfig(arch="torchvision:mobilenet_v3_small"), 4)
    assert count_params(mobile) < count_params(full) / 2
    with pytest.raises(ConfigError, match=r"^width=0\.5: expected 1\.0 for torchvision:resnet18"):
        ModelConfig(arch="torchvision:resnet18", width=0.5)


def test_each_source_builds_a_classifier_with_the_data_classes(user_module):
    x = torch.zeros(2, 3, 32, 32)
    for arch in ("googlenet", "torchvision:resnet18", "user_nets:small_cnn"):
        model = build_model(ModelConfig(arch=arch, variant="bn", width=1.0), 7).eval()
        assert model(x).shape == (2, 7), arch
    assert isinstance(build_model(ModelConfig(variant="bn", width=0.25), 7), GoogLeNet)
    with pytest.raises(ConfigError, match=r"expected a builder returning a torch\.nn\.Module"):
        build_model(ModelConfig(arch="user_nets:not_a_model"), 7)
    assert describe_model(ModelConfig(variant="bn", width=0.25)) == "bn GoogLeNet at width 0.25"
    mobile = ModelConfig(arch="torchvision:mobilenet_v3_small", width=0.5)
    assert describe_model(mobile) == "torchvision:mobilenet_v3_small at width 0.5"


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "user_nets:small_cnn"])
def test_a_replica_trains_any_arch_over_the_flat_vector(user_module, arch):
    """The flat layout covers every parameter, a step fills the flat gradient, and the averager
    knows the model has BatchNorm statistics to recompute."""
    cfg = ModelConfig(arch=arch, input_size=32)
    model, flat, _, layout = build_flat_model(cfg, 4, seed=0)
    assert layout.total == count_params(model) == flat.numel()
    assert has_batchnorm(model)
    # Seeded builds agree, as every shard and replica must.
    _, again, _, _ = build_flat_model(cfg, 4, seed=0)
    assert torch.equal(flat, again)
    batches = iter([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))])
    core = ReplicaCore(cfg, 4, batches)
    loss = core.compute(core.next_batch())
    assert torch.isfinite(loss) and core.grad.abs().sum() > 0


def test_aux_weight_applies_wherever_a_model_returns_aux_outputs():
    """torchvision's GoogLeNet and Inception v3 return their own NamedTuples in training."""
    target = torch.tensor([0, 1])
    main, aux = torch.randn(2, 3), torch.randn(2, 3)
    plain = classifier_loss(main, target)
    GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", "logits aux_logits2 aux_logits1")
    InceptionOutputs = namedtuple("InceptionOutputs", "logits aux_logits")
    two = classifier_loss(GoogLeNetOutputs(main, aux, aux), target, aux_weight=0.5)
    torch.testing.assert_close(two, plain + 0.5 * 2 * classifier_loss(aux, target))
    one = classifier_loss(InceptionOutputs(main, aux), target, aux_weight=0.5)
    torch.testing.assert_close(one, plain + 0.5 * classifier_loss(aux, target))
    # A head the model did not build (None) is skipped.
    torch.testing.assert_close(classifier_loss(InceptionOutputs(main, None), target), plain)
    model = build_model(ModelConfig(arch="torchvision:googlenet"), 3).train()
    outputs = model(torch.randn(2, 3, 64, 64))
    assert classifier_loss(outputs, target) > classifier_loss(outputs.logits, target)


def test_any_arch_has_a_summary_of_params_and_macs_per_block():
    cfg = ModelConfig(arch="torchvision:resnet18", input_size=64)
    summary = summarize_model(cfg, num_classes=10)
    rows = {row["name"]: row for row in summary["rows"]}
    assert summary["totals"]["params"] == 11_181_642 == sum(r["params"] for r in rows.values())
    # Every convolution and matrix product lies in one top-level block.
    assert summary["totals"]["macs"] == sum(r["macs"] for r in rows.values()) > 0
    assert rows["fc"]["macs"] == 512 * 10 and rows["layer1"]["macs"] > 0
    text = format_summary(summary)
    assert text.startswith("torchvision:resnet18, 64x64 input") and "11,181,642" in text
    # GoogLeNet keeps its Table-1 rows.
    googlenet = summarize_model(ModelConfig(variant="bn", width=0.25, input_size=64), 10)
    assert googlenet["arch"] == "googlenet" and googlenet["rows"][2]["name"] == "3a"


@pytest.mark.parametrize("name", sorted(ASKS_FOR_INIT))
def test_torchvision_builders_that_warn_about_their_init_are_built_quietly(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_model(ModelConfig(arch=f"torchvision:{name}"), 3)
