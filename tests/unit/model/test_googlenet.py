"""GoogLeNet structure, shapes, outputs, gradients and initialisation."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distinception import config
from distinception.config import ConfigError, ModelConfig
from distinception.model import (
    INCEPTION_TABLE,
    STAGES,
    VARIANTS,
    GoogLeNet,
    GoogLeNetOutputs,
    build_model,
    classifier_loss,
)
from distinception.model.accounting import load_table1
from distinception.model.googlenet import AuxPool, scale_channels

#: The paper's tables as published, kept with the tests (the package carries its own copy).
REFERENCE = Path(__file__).resolve().parents[2] / "data" / "reference"


@pytest.fixture(scope="module")
def faithful() -> GoogLeNet:
    torch.manual_seed(0)
    return GoogLeNet()


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the table ------------------------------------------------------------------------------


def test_inception_table_mirrors_table1_csv():
    csv_rows = {row.name: row for row in load_table1()}
    assert [spec.name for spec in INCEPTION_TABLE] == [n for stage in STAGES for n in stage]
    in_depth = csv_rows["conv2"].out_depth
    for spec in INCEPTION_TABLE:
        row = csv_rows[spec.name]
        got = (spec.n1x1, spec.n3x3red, spec.n3x3, spec.n5x5red, spec.n5x5, spec.pool_proj)
        want = (row.n1x1, row.n3x3red, row.n3x3, row.n5x5red, row.n5x5, row.pool_proj)
        assert got == want, spec.name
        assert row.in_depth == in_depth, spec.name
        assert spec.out_channels == row.out_depth, spec.name
        in_depth = spec.out_channels


def test_packaged_table1_is_the_reference_csv():
    reference = REFERENCE / "googlenet_table1.csv"
    packaged = Path(__file__).resolve().parents[3] / "distinception" / "model" / "table1.csv"
    assert packaged.read_text() == reference.read_text()


def test_variant_table_matches_config_choices():
    assert tuple(VARIANTS) == config.VARIANTS
    assert VARIANTS["faithful"].lrn and not VARIANTS["faithful"].batch_norm
    assert VARIANTS["bn"].batch_norm and not VARIANTS["bn"].lrn


# --- shapes and counts at 224 ---------------------------------------------------------------


def test_every_stage_shape_at_224(faithful: GoogLeNet):
    expected = {
        "conv1": (64, 112),
        "pool1": (64, 56),
        "norm1": (64, 56),
        "conv2": (192, 56),
        "norm2": (192, 56),
        "pool2": (192, 28),
        "inception3a": (256, 28),
        "inception3b": (480, 28),
        "pool3": (480, 14),
        "inception4a": (512, 14),
        "inception4b": (512, 14),
        "inception4c": (512, 14),
        "inception4d": (528, 14),
        "inception4e": (832, 14),
        "pool4": (832, 7),
        "inception5a": (832, 7),
        "inception5b": (1024, 7),
        "avgpool": (1024, 1),
    }
    seen: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(faithful, name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, tuple(out.shape))
        )
        for name in expected
    ]
    faithful.eval()
    try:
        with torch.no_grad():
            logits = faithful(torch.randn(1, 3, 224, 224))
    finally:
        for hook in hooks:
            hook.remove()
    assert list(seen) == list(expected)  # also checks the order the stages run in
    for name, (depth, hw) in expected.items():
        assert seen[name] == (1, depth, hw, hw), name
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (1, 1000)


def test_table1_modules_are_the_csv_rows(faithful: GoogLeNet):
    names = [name for name, _ in faithful.table1_modules()]
    assert names == [row.name for row in load_table1()]
    for (name, module), row in zip(faithful.table1_modules(), load_table1(), strict=True):
        assert n_params(module) == row.exact_params, name


def test_parameter_counts_at_224(faithful: GoogLeNet):
    assert n_params(faithful) == 13_378_280
    aux = [n_params(head) for _, head in faithful.aux_heads()]
    assert aux == [3_188_840, 3_190_888]
    assert n_params(GoogLeNet(aux=False)) == 6_998_552


def test_without_aux_no_heads_are_built():
    model = GoogLeNet(width=0.25, aux=False)
    assert model.aux1 is None and model.aux2 is None
    assert model.aux_heads() == []
    assert not [name for name, _ in model.named_parameters() if name.startswith("aux")]
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1000)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_train_returns_aux_outputs_eval_returns_logits(variant: str):
    torch.manual_seed(0)
    model = GoogLeNet(10, variant=variant, width=0.25)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, GoogLeNetOutputs)
    assert [t.shape for t in out] == [(2, 10)] * 3
    assert out.logits is out[0] and out.aux2 is out[2]
    with torch.no_grad():
        logits = model.eval()(x)
    assert isinstance(logits, torch.Tensor) and not isinstance(logits, tuple)
    assert logits.shape == (2, 10)


def test_faithful_and_bn_differ_only_where_named():
    faithful, bn = GoogLeNet(variant="faithful"), GoogLeNet(variant="bn")
    lrn = [m for m in faithful.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrn) == 2
    assert (lrn[0].size, lrn[0].alpha, lrn[0].beta, lrn[0].k) == (5, 1e-4, 0.75, 1.0)
    assert not [m for m in bn.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert not [m for m in faithful.modules() if isinstance(m, nn.BatchNorm2d)]
    convs = [m for m in bn.modules() if isinstance(m, nn.Conv2d)]
    norms = [m for m in bn.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 57 + 2  # 57 trunk convs, one per aux head
    assert all(conv.bias is None for conv in convs)
    # A BN pair (weight, bias) replaces each conv bias: one extra parameter per channel.
    faithful_convs = [m for m in faithful.modules() if isinstance(m, nn.Conv2d)]
    assert all(conv.bias is not None for conv in faithful_convs)
    assert n_params(bn) - n_params(faithful) == sum(c.out_channels for c in convs)
    for model in (faithful, bn):
        # The 5x5 branch really is 5x5 (not the 3x3 other reproductions carry).
        for spec in INCEPTION_TABLE:
            conv5 = getattr(model, f"inception{spec.name}").conv5x5.conv
            assert conv5.kernel_size == (5, 5) and conv5.padding == (2, 2)


def test_parameter_names_are_stable():
    names = [name for name, _ in GoogLeNet(width=0.125).named_parameters()]
    assert names[:2] == ["conv1.conv.weight", "conv1.conv.bias"]
    for name in (
        "conv2.reduce.conv.weight",
        "conv2.conv3x3.conv.weight",
        "inception3a.conv1x1.conv.weight",
        "inception3a.conv3x3_reduce.conv.weight",
        "inception3a.conv5x5.conv.weight",
        "inception5b.pool_proj.conv.bias",
        "fc.weight",
        "aux1.conv.conv.weight",
        "aux1.fc.weight",
        "aux2.classifier.bias",
    ):
        assert name in names, name
    trunk = [name for name, _ in GoogLeNet(width=0.125, aux=False).named_parameters()]
    assert names[: len(trunk)] == trunk  # aux heads come last, the trunk layout never moves
    bn_names = [name for name, _ in GoogLeNet(width=0.125, variant="bn").named_parameters()]
    assert "inception4c.conv3x3.bn.weight" in bn_names


# --- width and input size -------------------------------------------------------------------


def test_width_scales_every_channel_count():
    model = GoogLeNet(width=0.5)
    assert model.conv1.conv.out_channels == 32
    assert model.conv2.conv3x3.conv.out_channels == 96
    assert model.inception3a.conv5x5_reduce.conv.out_channels == 8
    assert model.inception5b.spec.out_channels == 512
    assert model.fc.in_features == 512
    assert model.aux1.conv.conv.out_channels == 64
    assert model.aux1.fc.in_features == 64 * 16
    assert model.aux1.fc.out_features == 512
    assert scale_channels(16, 0.01) == 1
    assert scale_channels(208, 0.125) == 26
    assert scale_channels(192, 0.3) == 58  # 57.6 rounds up, not down


@pytest.mark.parametrize("size", range(1, 31))
def test_aux_pool_always_gives_4x4(size: int):
    x = torch.randn(1, 2, size, size)
    assert AuxPool()(x).shape == (1, 2, 4, 4)


@pytest.mark.parametrize("size", [14, 15, 16])
def test_aux_pool_is_the_papers_5x5_stride_3_on_14_to_16(size: int):
    x = torch.randn(1, 2, size, size)
    torch.testing.assert_close(AuxPool()(x), F.avg_pool2d(x, 5, 3))
    # Adaptive pooling would use 4- or 5-wide windows, so the test can tell them apart.
    assert not torch.allclose(AuxPool()(x), F.adaptive_avg_pool2d(x, 4))


def test_input_below_32_is_refused_by_the_config():
    with pytest.raises(ConfigError, match="input_size"):
        ModelConfig(input_size=31)
    ModelConfig(input_size=32)


def test_build_model_follows_the_config():
    cfg = ModelConfig(variant="bn", width=0.25, aux=False, dropout=0.2, aux_dropout=0.5)
    model = build_model(cfg, num_classes=7)
    assert (model.variant, model.width, model.num_classes, model.has_aux) == ("bn", 0.25, 7, False)
    assert model.dropout.p == 0.2 and model.fc.out_features == 7
    with_aux = build_model(ModelConfig(width=0.25, aux_dropout=0.5), num_classes=7)
    assert with_aux.aux1.dropout.p == 0.5 and with_aux.aux2.classifier.out_features == 7


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"variant": "resnet"}, "variant"), ({"width": 0.0}, "width"), ({"num_classes": 0}, "num")],
)
def test_constructor_refuses_bad_arguments(kwargs: dict, field: str):
    with pytest.raises(ValueError, match=field):
        GoogLeNet(**kwargs)


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("width", [0.125, 0.25, 0.5])
@pytest.mark.parametrize("size", [32, 48, 64, 96])
def test_forward_backward_gives_finite_grads_everywhere(variant: str, width: float, size: int):
    torch.manual_seed(0)
    model = GoogLeNet(5, variant=variant, width=width).train()
    x = torch.randn(2, 3, size, size)  # two images: BatchNorm needs >1 value on 1x1 maps
    out = model(x)
    assert isinstance(out, GoogLeNetOutputs)
    loss = classifier_loss(out, torch.tensor([0, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    # Both aux heads take part in the loss.
    assert model.aux1.classifier.weight.grad.abs().sum() > 0
    assert model.aux2.classifier.weight.grad.abs().sum() > 0


def test_deepcopy_and_torch_func_see_the_same_model():
    torch.manual_seed(0)
    model = GoogLeNet(4, variant="bn", width=0.125).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(copy.deepcopy(model)(x), ref)
        state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        torch.testing.assert_close(torch.func.functional_call(model, state, (x,)), ref)

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    target = torch.tensor([1, 2])

    def loss_fn(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return classifier_loss(torch.func.functional_call(model, {**p, **buffers}, (x,)), target)

    grads = torch.func.grad(loss_fn)(params)
    assert grads.keys() == params.keys()
    assert all(torch.isfinite(g).all() for g in grads.values())


# --- initialisation ----------------------------------------------------------------------------


def test_faithful_init_is_caffes_xavier_with_bias_point_two(faithful: GoogLeNet):
    classifiers = {id(m) for m in faithful.classifiers()}
    assert len(classifiers) == 3
    layers = [m for m in faithful.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 57 + 1 + 2 * 3
    for layer in layers:
        bias = layer.bias.detach()
        assert torch.all(bias == (0.0 if id(layer) in classifiers else 0.2))
        w = layer.weight.detach()
        fan_in = w[0].numel()
        bound = math.sqrt(3.0 / fan_in)
        assert w.abs().max() <= bound * (1 + 1e-6)
        if w.numel() >= 10_000:
            # Uniform on [-b, b]: std b/sqrt(3) = 1/sqrt(fan_in), values reach close to b.
            assert w.abs().max() > 0.95 * bound
            assert w.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.05)
            assert abs(w.mean().item()) < 0.05 * bound


def test_bn_init():
    model = GoogLeNet(variant="bn", width=0.25)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    classifiers = {id(m) for m in model.classifiers()}
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert torch.all(m.bias == (0.0 if id(m) in classifiers else 0.2))
