"""The closed-loop momentum correction: its measurement of the total momentum, checked by hand
and against torch SGD, and the feedback that moves the share."""

import math

import pytest
import torch

from distinception.config import OptimConfig, PSConfig
from distinception.ps.layout import ParamLayout
from distinception.ps.policies import MomentumLoop, explicit_momentum
from distinception.ps.shard import ShardCore


def _loop(size: int, wd: float = 0.0, **kwargs) -> MomentumLoop:
    return MomentumLoop(0.9, history=6, decay=torch.full((size,), wd), **kwargs)


def test_the_measurement_against_a_hand_computation():
    loop = _loop(3, wd=0.1, samples=3)
    loop.record(0, torch.tensor([1.0, 1.0, 1.0]), lr=0.0)
    loop.record(1, torch.tensor([0.8, 1.2, 0.9]), lr=0.5)
    loop.record(2, torch.tensor([0.5, 1.5, 0.9]), lr=0.5)  # step 1 taken at lr 0.5
    g = torch.tensor([0.2, -0.4, 1.0])
    # (x2 - x1 + lr (g + wd x1)) / (x1 - x0), coordinate by coordinate:
    ratios = [
        (-0.3 + 0.5 * (0.2 + 0.08)) / -0.2,  # 0.8
        (0.3 + 0.5 * (-0.4 + 0.12)) / 0.2,  # 0.8
        (0.0 + 0.5 * (1.0 + 0.09)) / -0.1,  # -5.45
    ]
    assert loop.measure(g, 1, momentum=0.4) == pytest.approx(sorted(ratios)[1])


def test_a_synchronous_sgd_run_measures_exactly_its_momentum():
    """With every gradient computed on the weights it is applied to, the total momentum is the
    explicit one: each step's measurement must give torch SGD's momentum back."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(200))
    opt = torch.optim.SGD([w], lr=0.05, momentum=0.7, weight_decay=0.01)
    loop = _loop(200, wd=0.01, samples=200)
    loop.record(0, w.detach(), lr=0.05)
    grads = []
    for v in range(5):
        g = torch.randn(200) + w.detach()  # a noisy quadratic
        grads.append(g)
        w.grad = g.clone()
        opt.step()
        loop.record(v + 1, w.detach(), lr=0.05)
    for v in range(1, 5):
        assert loop.measure(grads[v], v, momentum=0.0) == pytest.approx(0.7, abs=1e-4)


def test_a_fresh_gradient_measures_the_momentum_in_use_and_a_forgotten_one_nothing():
    loop = _loop(4, samples=4)
    for v in range(10):
        loop.record(v, torch.full((4,), float(-(v**2))), lr=0.1)
    assert sorted(loop.versions) == [4, 5, 6, 7, 8, 9]  # history 6
    assert loop.nbytes == 6 * 4 * 4
    assert loop.measure(torch.zeros(4), 9, momentum=0.35) == 0.35  # the step about to be taken
    assert loop.measure(torch.zeros(4), 3, momentum=0.35) is None  # x_3 is gone
    assert loop.measure(torch.zeros(4), 4, momentum=0.35) is None  # and so is x_3 for step 4
    # steps of -9, -11, -13, ...: (x6 - x5) / (x5 - x4) = -11 / -9
    assert loop.measure(torch.zeros(4), 5, momentum=0.35) == pytest.approx(11 / 9)


def test_stale_gradients_measure_more_momentum_than_the_explicit_one():
    """Asynchrony shows up as momentum the shard did not set: on a noisy quadratic whose every
    gradient is three steps stale, the measured total is well above the explicit 0.3."""
    torch.manual_seed(1)
    curvature = torch.rand(4000) * 2
    w = torch.randn(4000)
    lr, mu, stale = 0.2, 0.3, 3
    buf = torch.zeros_like(w)
    history = [w.clone()]
    loop = _loop(4000, samples=4000)
    loop.record(0, w, lr=lr)
    measured = []
    for v in range(40):
        pulled = history[max(0, v - stale)]
        measured.append(loop.measure(curvature * history[v] + 0.01 * torch.randn(4000), v, mu))
        buf = mu * buf + curvature * pulled + 0.01 * torch.randn(4000)
        w = w - lr * buf
        history.append(w.clone())
        loop.record(v + 1, w, lr=lr)
    # Step v's measurement needs x_{v+1}, so it is made when that gradient arrives late; here
    # it is made before the step, so only the fresh measurement of the newest step is returned.
    late = [loop.measure(curvature * history[v], v, mu) for v in range(36, 40)]
    assert all(m is not None and m > mu + 0.2 for m in late), late
    assert measured[-1] == mu


def test_the_feedback_moves_the_share_toward_the_target_and_keeps_it_in_bounds():
    loop = _loop(4, gain=0.1, start=0.5)
    assert loop.update(1.4) == pytest.approx(0.55)  # total 1.4 above 0.9: correct more
    assert loop.update(0.4) == pytest.approx(0.5)  # total 0.4 below: correct less
    for _ in range(100):
        loop.update(3.0)
    assert loop.share == 1.0
    for _ in range(100):
        loop.update(-3.0)
    assert loop.share == 0.0
    loop.update(math.nan)
    assert loop.share == 0.0 and loop.measured == 202  # a NaN is not counted
    assert -3.0 < loop.total.mean < -2.0  # a running mean: the recent -3s outweigh the 3s


def _shard(correction: str) -> ShardCore:
    layout = ParamLayout.from_module(torch.nn.Sequential(torch.nn.Linear(40, 50)))
    ps = PSConfig(num_replicas=2, momentum_correction=correction)
    opt = OptimConfig(lr=0.2, momentum=0.9, weight_decay=0.0)
    return ShardCore(0, 0, layout.total, layout, torch.randn(layout.total), ps, opt, 100)


def test_a_closed_loop_shard_moves_its_share_and_its_momentum_with_it():
    """Two-step-stale pushes on a quadratic: the shard starts at the full correction and its
    share moves off it as measurements come in, the momentum following the share."""
    torch.manual_seed(2)
    s = _shard("closed-loop")
    assert s.loop is not None and s.correction == 1.0
    curvature = torch.rand(s.size)
    kept = {0: s.flat.clone()}
    for _ in range(300):
        base = max(0, s.version - 2)
        s.apply(curvature * kept[base], base, examples=1, fingerprint=s.fingerprint)
        kept[s.version] = s.flat.clone()
    stats = s.stats()
    assert s.loop.measured > 250
    assert stats["momentum_share"] != 1.0
    expected = explicit_momentum(0.9, stats["mean_staleness"], share=stats["momentum_share"])
    assert stats["momentum"] == pytest.approx(expected, abs=0.02)
    assert stats["momentum_total"] == s.loop.total.mean
    # A checkpoint carries the share.
    other = _shard("closed-loop")
    other.flat.copy_(s.flat)
    other.load_state_dict(s.state_dict())
    assert other.correction == s.correction and other.loop.measured == s.loop.measured
    assert other.stats()["momentum_total"] == stats["momentum_total"]


def test_a_fixed_share_shard_keeps_no_loop():
    assert _shard("partial:0.5").loop is None
