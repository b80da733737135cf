import itertools

import torch
from torch import nn

from distinception.ps.layout import ParamLayout, flatten_module


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)
    )


def test_parameters_become_views_of_one_flat_vector():
    model = _net()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    flat, _grad, layout = flatten_module(model)
    assert layout.total == sum(p.numel() for p in model.parameters()) == flat.numel()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name])
        assert p.data_ptr() >= flat.data_ptr()
    flat.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())


def test_gradients_accumulate_into_the_flat_gradient():
    model = _net()
    _flat, grad, layout = flatten_module(model)
    x = torch.randn(2, 3, 6, 6)
    model(x).sum().backward()
    g1 = grad.clone()
    assert float(g1.abs().sum()) > 0
    model(x).sum().backward()
    torch.testing.assert_close(grad, 2 * g1)
    for e in layout.entries:
        p = dict(model.named_parameters())[e.name]
        torch.testing.assert_close(p.grad.flatten(), grad[e.offset : e.offset + e.numel])


def test_shard_ranges_cover_contiguously_and_balance():
    layout = ParamLayout.from_module(_net())
    for s in (1, 2, 3, 7):
        ranges = layout.shard_ranges(s)
        assert ranges[0][0] == 0 and ranges[-1][1] == layout.total
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
        sizes = [b - a for a, b in ranges]
        assert max(sizes) - min(sizes) <= 1


def test_decay_mask_excludes_biases_and_norm_terms():
    layout = ParamLayout.from_module(_net())
    pieces = layout.decay_mask(0, layout.total)
    decays = [d for _, _, d in pieces]
    names = [e.name for e in layout.entries]
    assert decays == [e.decay for e in layout.entries]
    assert dict(zip(names, decays, strict=False)) == {
        "0.weight": True,
        "0.bias": False,
        "1.weight": False,
        "1.bias": False,
        "3.weight": True,
        "3.bias": False,
    }


def test_fingerprint_tells_layouts_apart():
    a = ParamLayout.from_module(_net())
    b = ParamLayout.from_module(nn.Sequential(nn.Linear(4, 3)))
    assert a.fingerprint == ParamLayout.from_module(_net()).fingerprint
    assert a.fingerprint != b.fingerprint


def test_wire_formats_round_trip():
    import numpy as np

    from distinception.ps.transport.wire import from_wire, to_wire

    t = torch.linspace(-3, 3, 101)
    torch.testing.assert_close(from_wire(to_wire(t, "float32")), t)
    half = to_wire(t, "bfloat16")
    assert half.dtype == np.int16 and half.nbytes == t.numel() * 2
    torch.testing.assert_close(from_wire(half), t, atol=0.02, rtol=0.01)
