"""The async-aware updates: momentum compensation and delay compensation, checked by hand."""

import pytest
import torch

from distinception.config import ConfigError, OptimConfig, PSConfig, parse_momentum_correction
from distinception.ps.layout import ParamLayout
from distinception.ps.policies import (
    DelayCompensation,
    StalenessMeter,
    explicit_momentum,
    implicit_momentum,
)
from distinception.ps.shard import ShardCore


def _shard(**fields) -> ShardCore:
    """A 15-value shard; `fields` of `OptimConfig` go there, the rest to `PSConfig`."""
    layout = ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(4, 3)))  # 12 + 3
    optim = {k: fields.pop(k) for k in list(fields) if k in OptimConfig.__dataclass_fields__}
    ps = PSConfig(**({"momentum_correction": "none"} | fields))
    opt = OptimConfig(**({"weight_decay": 0.0} | optim))
    return ShardCore(0, 0, layout.total, layout, torch.ones(layout.total), ps, opt, 100)


@pytest.mark.parametrize(
    ("staleness", "implicit"), [(0, 0.0), (1, 0.5), (3, 0.75), (9, 0.9), (0.8, 0.8 / 1.8)]
)
def test_implicit_momentum_is_one_minus_one_over_the_workers_it_implies(staleness, implicit):
    assert implicit_momentum(staleness) == pytest.approx(implicit)


def test_explicit_momentum_keeps_the_total_and_never_goes_negative():
    assert explicit_momentum(0.9, 0) == pytest.approx(0.9)
    assert explicit_momentum(0.9, 1) == pytest.approx(0.4)  # 0.4 + 0.5 implicit = 0.9
    assert explicit_momentum(0.9, 3) == pytest.approx(0.15)
    assert explicit_momentum(0.9, 20) == 0.0
    assert explicit_momentum(0.0, 1) == 0.0


def test_a_partial_correction_takes_off_its_share_of_the_implicit_momentum():
    assert explicit_momentum(0.9, 1, share=0.5) == pytest.approx(0.65)  # 0.9 - 0.5 x 0.5
    assert explicit_momentum(0.9, 3, share=0.5) == pytest.approx(0.525)  # 0.9 - 0.5 x 0.75
    assert explicit_momentum(0.9, 3, share=0.0) == pytest.approx(0.9)
    assert explicit_momentum(0.9, 3, share=1.0) == explicit_momentum(0.9, 3)
    assert explicit_momentum(0.3, 20, share=0.5) == 0.0


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("full", ("fixed", 1.0)),
        ("auto", ("fixed", 1.0)),
        ("none", ("fixed", 0.0)),
        ("partial:0.5", ("fixed", 0.5)),
        ("partial:1", ("fixed", 1.0)),
        ("closed-loop", ("closed-loop", 1.0)),
    ],
)
def test_momentum_correction_names_its_share(spec, parsed):
    assert parse_momentum_correction(spec) == parsed


def test_staleness_meter_is_a_bias_corrected_running_mean():
    m = StalenessMeter(decay=0.5)
    assert m.mean == 0.0
    m.add(4)
    assert m.mean == pytest.approx(4.0)  # the first sample is the mean, not 4 * (1 - decay)
    m.add(0)
    # weights 0.5 * 0.5 = 0.25 on 4 and 0.5 on 0, normalised by 0.75
    assert m.mean == pytest.approx(4 * 0.25 / 0.75)
    state = m.state_dict()
    other = StalenessMeter(decay=0.5)
    other.load_state_dict(state)
    assert other.mean == m.mean


def test_shard_lowers_its_momentum_from_the_staleness_it_measures():
    s = _shard(lr=0.1, momentum=0.9, momentum_correction="auto")
    g = torch.ones(15)
    s.apply(g, 0, examples=1, fingerprint=s.fingerprint)
    assert s.momentum == pytest.approx(0.9)  # staleness 0 so far
    for _ in range(400):  # every push one version stale: two workers' worth of asynchrony
        s.apply(g, s.version - 1, examples=1, fingerprint=s.fingerprint)
    assert s.momentum == pytest.approx(0.4, abs=0.01)
    assert s.stats()["mean_staleness"] == pytest.approx(1.0, abs=0.02)


def test_shard_under_a_partial_correction_lowers_its_momentum_by_that_share():
    s = _shard(lr=0.1, momentum=0.9, momentum_correction="partial:0.5")
    for _ in range(400):  # every push one version stale: implicit momentum 0.5
        s.apply(torch.ones(15), s.version - 1, examples=1, fingerprint=s.fingerprint)
    assert s.momentum == pytest.approx(0.65, abs=0.01)


def test_momentum_compensation_off_keeps_the_configured_momentum():
    s = _shard(lr=0.1, momentum=0.9, momentum_correction="none")
    for _ in range(20):
        s.apply(torch.ones(15), max(0, s.version - 3), examples=1, fingerprint=s.fingerprint)
    assert s.momentum == 0.9


def test_momentum_compensation_is_the_same_step_as_sgd_with_the_lowered_momentum():
    """The shard's update equals torch SGD run with the momentum the formula gives."""
    s = _shard(lr=0.1, momentum=0.9, momentum_correction="auto")
    ref = torch.nn.Parameter(torch.ones(15))
    opt = torch.optim.SGD([ref], lr=0.1, momentum=0.9)
    meter = StalenessMeter()
    for k in range(6):
        g = torch.arange(15.0) * (k + 1) / 10
        stale = k % 3
        s.apply(g, max(0, s.version - stale), examples=1, fingerprint=s.fingerprint)
        meter.add(min(stale, k))
        opt.param_groups[0]["momentum"] = explicit_momentum(0.9, meter.mean)
        ref.grad = g.clone()
        opt.step()
    torch.testing.assert_close(s.flat, ref.detach())


def test_delay_compensation_formula_against_a_hand_computation():
    dc = DelayCompensation(lam=0.5, history=4, adaptive=False)
    w0 = torch.tensor([1.0, 2.0, 3.0])
    w1 = torch.tensor([0.5, 2.5, 3.0])
    dc.record(0, w0)
    dc.record(1, w1)
    g = torch.tensor([2.0, -1.0, 4.0])
    out = dc.compensate(g, 0, w1, torch.empty(3))
    # g + 0.5 * g^2 * (w_now - w_pulled)
    expected = g + 0.5 * g * g * (w1 - w0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, torch.tensor([1.0, -0.75, 4.0]))
    # A gradient on the newest weights is left alone.
    torch.testing.assert_close(dc.compensate(g, 1, w1, torch.empty(3)), g)


def test_adaptive_delay_compensation_divides_by_the_running_rms():
    dc = DelayCompensation(lam=1.0, history=2, adaptive=True, m=0.95)
    w0, w1 = torch.zeros(2), torch.tensor([1.0, -1.0])
    dc.record(0, w0)
    dc.record(1, w1)
    g = torch.tensor([3.0, 0.5])
    out = dc.compensate(g, 0, w1, torch.empty(2))
    # first mean square is g^2, so the term is g^2 (w1 - w0) / |g| = |g| (w1 - w0)
    torch.testing.assert_close(out, g + g.abs() * (w1 - w0), atol=1e-5, rtol=1e-5)


def test_delay_compensation_keeps_a_bounded_history_and_reports_its_memory():
    dc = DelayCompensation(lam=0.1, history=3, adaptive=False)
    for v in range(10):
        dc.record(v, torch.full((1000,), float(v)))
    assert sorted(dc.versions) == [7, 8, 9]
    assert dc.nbytes == 3 * 1000 * 4
    # Staler than the history: corrected against the oldest version kept (partial correction).
    g = torch.ones(1000)
    out = dc.compensate(g, 2, torch.full((1000,), 9.0), torch.empty(1000))
    torch.testing.assert_close(out, torch.full((1000,), 1 + 0.1 * (9 - 7)))


def test_shard_applies_the_delay_compensated_gradient():
    s = _shard(lr=1.0, momentum=0.0, delay_compensation=0.5, dc_adaptive=False, dc_history=4)
    g1 = torch.full((15,), 0.5)
    s.apply(g1, 0, examples=1, fingerprint=s.fingerprint)  # w: 1 -> 0.5
    g2 = torch.full((15,), 2.0)
    s.apply(g2, 0, examples=1, fingerprint=s.fingerprint)  # computed on w0 = 1, one stale
    # g2 + 0.5 * 4 * (0.5 - 1) = 2 - 1 = 1, so w = 0.5 - 1 = -0.5
    torch.testing.assert_close(s.flat, torch.full((15,), -0.5))
    assert s.stats()["dc_bytes"] == 3 * 15 * 4  # versions 0, 1 and 2


def test_delay_compensation_history_defaults_to_twice_the_replicas():
    assert PSConfig(num_replicas=4, delay_compensation=0.1).dc_versions == 10
    assert PSConfig(num_replicas=4).dc_versions == 0
    assert PSConfig(delay_compensation=0.1, dc_history=3).dc_versions == 3


def test_lag_auto_is_zero_alone_and_under_a_bound():
    assert PSConfig(num_replicas=1).lag == 0
    assert PSConfig(num_replicas=2).lag == 1
    assert PSConfig(num_replicas=2, staleness="bound:2").lag == 0
    assert PSConfig(num_replicas=1, max_lag=1).lag == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "momentum_correction",
            "maybe",
            "momentum_correction='maybe': expected partial:F with F a number in",
        ),
        ("momentum_correction", "partial:1.5", "momentum_correction='partial:1.5': expected"),
        ("momentum_correction", "partial:x", "momentum_correction='partial:x': expected"),
        ("delay_compensation", -1.0, "delay_compensation=-1.0: expected a number >= 0"),
        ("max_lag", -2, "max_lag=-2: expected an integer >= -1"),
    ],
)
def test_bad_async_options_fail_with_one_line(field, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        PSConfig(**{field: value})


def test_delay_compensation_takes_a_bf16_push_like_an_fp32_one():
    def run(dtype):
        s = _shard(lr=1.0, momentum=0.0, delay_compensation=0.5, dc_history=4)
        s.apply(torch.full((15,), 0.5).to(dtype), 0, examples=1, fingerprint=s.fingerprint)
        s.apply(torch.full((15,), 2.0).to(dtype), 0, examples=1, fingerprint=s.fingerprint)
        return s.flat.clone()

    torch.testing.assert_close(run(torch.bfloat16), run(torch.float32))
