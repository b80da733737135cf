import math

import pytest
import torch

from distinception.config import OptimConfig, PSConfig
from distinception.ps.layout import ParamLayout
from distinception.ps.policies import StalenessPolicy
from distinception.ps.shard import ShardCore, histogram_mean, histogram_quantile, lr_factor


def _layout() -> ParamLayout:
    return ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(4, 3)))  # 12 + 3


def _shard(**fields) -> ShardCore:
    """A shard over `_layout()`; `fields` of `OptimConfig` go there, the rest to `PSConfig`."""
    layout = _layout()
    optim = {k: fields.pop(k) for k in list(fields) if k in OptimConfig.__dataclass_fields__}
    opt = OptimConfig(**({"momentum": 0.0, "weight_decay": 0.0} | optim))
    return ShardCore(
        0, 0, layout.total, layout, torch.ones(layout.total), PSConfig(**fields), opt, 100
    )


def test_apply_is_an_sgd_step_and_bumps_the_version():
    s = _shard(lr=0.1)
    r = s.apply(torch.full((15,), 2.0), 0, examples=8, fingerprint=s.fingerprint)
    assert r.accepted and r.version == 1 and r.staleness == 0
    torch.testing.assert_close(s.flat, torch.full((15,), 1 - 0.2))
    assert s.examples == 8


def test_momentum_matches_torch_sgd_on_a_plain_tensor():
    s = _shard(lr=0.1, momentum=0.9)
    ref = torch.nn.Parameter(torch.ones(15))
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    for k in range(3):
        g = torch.arange(15.0) * (k + 1)
        s.apply(g, s.version, examples=1, fingerprint=s.fingerprint)
        ref.grad = g.clone()
        opt.step()
    torch.testing.assert_close(s.flat, ref.detach())


def test_weight_decay_skips_biases():
    s = _shard(lr=1.0, weight_decay=0.5)
    s.apply(torch.zeros(15), 0, examples=1, fingerprint=s.fingerprint)
    torch.testing.assert_close(s.flat[:12], torch.full((12,), 0.5))  # weight: decayed
    torch.testing.assert_close(s.flat[12:], torch.ones(3))  # bias: untouched


@pytest.mark.parametrize(
    ("grad", "kwargs", "reason"),
    [
        (torch.full((15,), float("nan")), {}, "nonfinite"),
        (torch.full((15,), float("inf")), {}, "nonfinite"),
        (torch.zeros(14), {}, "length"),
        (torch.zeros(15), {"fingerprint": "other"}, "layout"),
        (torch.zeros(15), {"incarnation": "old"}, "restarted"),
    ],
)
def test_bad_pushes_are_refused_counted_and_never_applied(grad, kwargs, reason):
    s = _shard()
    before = s.flat.clone()
    args = {"examples": 1, "fingerprint": s.fingerprint} | kwargs
    r = s.apply(grad, 0, **args)
    assert not r.accepted and r.reason == reason
    assert s.version == 0 and s.refused[reason] == 1
    torch.testing.assert_close(s.flat, before)


def test_staleness_is_recorded_and_bounded():
    s = _shard(staleness="bound:1")
    for _ in range(3):
        s.apply(torch.zeros(15), s.version, examples=1, fingerprint=s.fingerprint)
    r = s.apply(torch.zeros(15), 2, examples=1, fingerprint=s.fingerprint)  # staleness 1
    assert r.accepted and r.staleness == 1
    r = s.apply(torch.zeros(15), 1, examples=1, fingerprint=s.fingerprint)  # staleness 3
    assert not r.accepted and r.reason == "stale"
    assert s.staleness_hist == {0: 3, 1: 1}


def test_scale_policy_divides_the_gradient_by_staleness():
    s = _shard(lr=1.0, staleness="scale")
    s.apply(torch.zeros(15), 0, examples=1, fingerprint=s.fingerprint)
    s.apply(torch.zeros(15), 1, examples=1, fingerprint=s.fingerprint)
    s.apply(torch.full((15,), 4.0), 0, examples=1, fingerprint=s.fingerprint)  # staleness 2
    torch.testing.assert_close(s.flat, torch.full((15,), 1 - 2.0))


def test_policy_parsing():
    assert StalenessPolicy.parse("bound:3").decide(4) == (False, 0.0)
    assert StalenessPolicy.parse("none").decide(100) == (True, 1.0)


def test_lr_schedule_counts_examples_with_warmup():
    optim = OptimConfig(lr_decay=0.5, lr_decay_epochs=2.0, warmup_examples=10)
    assert lr_factor(0, optim, 100) == pytest.approx(0.1)
    assert lr_factor(150, optim, 100) == 1.0
    assert lr_factor(450, optim, 100) == 0.25
    s = _shard(lr=0.1, lr_decay=0.5, lr_decay_epochs=1.0)  # 100 examples per epoch
    for _ in range(3):
        s.apply(torch.zeros(15), s.version, examples=50, fingerprint=s.fingerprint)
    assert s.lr == pytest.approx(0.05)


def test_checkpoint_round_trip_restores_optimizer_and_version():
    s = _shard(lr=0.1, momentum=0.9)
    for _k in range(3):
        s.apply(torch.randn(15), s.version, examples=4, fingerprint=s.fingerprint)
    state = s.state_dict()
    t = _shard(lr=0.1, momentum=0.9)
    t.load_state_dict(state)
    g = torch.randn(15)
    s.apply(g, s.version, examples=4, fingerprint=s.fingerprint)
    t.apply(g, t.version, examples=4, fingerprint=t.fingerprint)
    torch.testing.assert_close(s.flat, t.flat)
    assert t.version == s.version == 4 and t.examples == 16


def test_checkpoint_of_another_range_is_refused():
    layout = _layout()
    a = ShardCore(0, 0, 7, layout, torch.zeros(7), PSConfig(), OptimConfig(), 10)
    b = ShardCore(1, 7, 15, layout, torch.zeros(8), PSConfig(), OptimConfig(), 10)
    with pytest.raises(ValueError, match="checkpoint covers"):
        b.load_state_dict(a.state_dict())


def test_histogram_quantile():
    assert histogram_quantile({}, 0.5) == 0.0
    assert histogram_quantile({0: 40, 1: 55, 7: 5}, 0.5) == 1.0
    assert histogram_quantile({0: 50, 1: 45, 7: 5}, 0.99) == 7.0
    assert not math.isnan(histogram_quantile({3: 1}, 0.95))


def test_histogram_mean_reads_string_keys_as_json_gives_them():
    assert histogram_mean({}) == 0.0
    assert histogram_mean({0: 1, 2: 3}) == 1.5
    assert histogram_mean({"0": 1, "2": 3}) == 1.5
