import time

import torch

from distinception.config import from_dict
from distinception.ps.averager import AveragerCore, AveragerLoop
from distinception.recipes import get_recipe


def _cfg(**averager):
    return from_dict({"averager": averager}, get_recipe("tiny"))


def _core(**averager):
    cfg = _cfg(**averager)
    return AveragerCore(cfg.model, cfg.averager, 4)


def _batches(n=2, size=32, classes=4):
    g = torch.Generator().manual_seed(0)
    views = torch.randn(n * 8, 1, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (n * 8,), generator=g)
    return [(views[i : i + 8], labels[i : i + 8]) for i in range(0, n * 8, 8)]


def test_uniform_polyak_is_the_mean_of_observed_weights():
    core = _core(polyak="uniform", polyak_start=1)
    n = core.flat.numel()
    core.observe(0, torch.full((n,), 100.0))  # before the start: not averaged
    for v, value in enumerate([1.0, 2.0, 6.0], start=1):
        assert core.observe(v, torch.full((n,), value))
    assert not core.observe(3, torch.full((n,), 50.0))  # same version again: ignored
    avg = torch.cat([p.detach().flatten() for p in core.averaged.module.parameters()])
    torch.testing.assert_close(avg, torch.full((n,), 3.0))
    assert core.samples == 3


def _averaged(core):
    return torch.cat([p.detach().flatten() for p in core.averaged.module.parameters()])


def test_ema_decays_once_per_update_between_samples():
    core = _core(polyak="ema", ema_decay=0.5)
    n = core.flat.numel()
    core.observe(1, torch.zeros(n))
    core.observe(2, torch.full((n,), 4.0))  # one update later: 0.5 * 0 + 0.5 * 4
    torch.testing.assert_close(_averaged(core), torch.full((n,), 2.0))
    core.observe(4, torch.full((n,), 10.0))  # two updates later: 0.25 * 2 + 0.75 * 10
    torch.testing.assert_close(_averaged(core), torch.full((n,), 8.0))
    core.observe(3, torch.full((n,), 0.0))  # a restored shard went back: one update
    torch.testing.assert_close(_averaged(core), torch.full((n,), 4.0))


def test_ema_horizon_does_not_depend_on_how_often_it_samples():
    """Sampling every update or every fourth of the same trajectory (weights that grow by 1
    per update) gives averages that differ only by what the sparser one did not see."""
    dense = _core(polyak="ema", ema_decay=0.9)
    sparse = _core(polyak="ema", ema_decay=0.9)
    n = dense.flat.numel()
    for v in range(0, 201):
        dense.observe(v, torch.full((n,), float(v)))
        if v % 4 == 0:
            sparse.observe(v, torch.full((n,), float(v)))
    # The dense EMA of a ramp lags it by decay / (1 - decay) = 9 updates; the sparse one by
    # about as much (the steps between its samples are folded in at their end).
    assert abs(200 - _averaged(dense)[0].item() - 9.0) < 0.01
    assert abs(_averaged(sparse)[0].item() - _averaged(dense)[0].item()) < 2.0
    # With a decay per sample, the sparse one would have lagged 4 times as far (36 updates).


def test_evaluation_recomputes_bn_statistics_and_reports_both_weights():
    core = _core(polyak="uniform")
    core.observe(1, core.flat.clone())
    bn_seen = []

    def bn_batches():
        bn_seen.append(1)
        return (v[:, 0] for v, _ in _batches())

    res = core.evaluate(lambda: _batches(), bn_batches)
    assert len(bn_seen) == 2  # raw and averaged copies each recalibrated
    for key in ("raw_top1_error", "raw_top5_error", "polyak_top1_error", "polyak_top5_error"):
        assert 0.0 <= res[key] <= 1.0
    assert res["val_images"] == 16
    # Evaluation works on copies: the sampled weights are untouched.
    model = core.inference_model(bn_batches)
    assert not model.training
    assert all(p.data_ptr() != core.flat.data_ptr() for p in model.parameters())


def test_state_round_trip():
    a = _core()
    a.observe(3, torch.randn(a.flat.numel()))
    b = _core()
    b.load_state_dict(a.state_dict())
    assert (b.version, b.samples) == (3, 1)
    for p, q in zip(a.averaged.parameters(), b.averaged.parameters(), strict=True):
        torch.testing.assert_close(p, q)


class _CountingShards:
    """One in-memory shard whose weights are all `v` at version `v`, one version per pull."""

    errors = (RuntimeError,)

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulls = 0
        self.versions = [0]
        self.incarnations = ["a"]
        self.stale = False

    def issue(self, after=None):
        return None

    def finish(self, ticket, load, attempts=60):
        self.pulls += 1
        self.versions = [self.pulls]
        load(0, self.total, torch.full((self.total,), float(self.pulls)))


def test_sampling_goes_on_while_an_evaluation_is_scored():
    """An evaluation scores copies outside the lock: the sampler takes its samples meanwhile
    instead of folding the whole evaluation's updates in as one step."""
    cfg = _cfg(polyak="ema", ema_decay=0.5, interval_s=0.01)
    shards = _CountingShards(AveragerCore(cfg.model, cfg.averager, 4).layout.total)
    loop = AveragerLoop(cfg, "", 4, lambda count: shards, "", resume=False)
    during: list[int] = []

    def slow_val():
        start = shards.pulls
        deadline = time.monotonic() + 10
        while shards.pulls < start + 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        during.append(shards.pulls - start)
        return _batches()

    loop._val = slow_val
    loop._bn = lambda: (v[:, 0] for v, _ in _batches())
    loop.start()
    try:
        while loop.core.samples < 2:
            time.sleep(0.01)
        res = loop.evaluate()
    finally:
        loop.stop()
    assert len(during) == 2 and min(during) >= 5  # raw and Polyak each scored while sampling
    assert res["version"] < loop.core.version  # the scores are of the snapshot's version


def test_held_weights_are_scored_after_training_at_the_versions_they_were_held_at():
    """`run.eval_scoring: after`: holding copies the weights of the moment; scoring them later
    gives the scores of those versions, not of the weights at the end, and lets them go."""
    cfg = _cfg(polyak="ema", ema_decay=0.5, interval_s=0.01)
    shards = _CountingShards(AveragerCore(cfg.model, cfg.averager, 4).layout.total)
    loop = AveragerLoop(cfg, "", 4, lambda count: shards, "", resume=False)
    loop._val = _batches
    loop._bn = lambda: (v[:, 0] for v, _ in _batches())
    held: dict[int, int] = {}
    loop.start()
    try:
        for key in (0, 1):
            target = loop.core.version + 3
            while loop.core.version < target:
                time.sleep(0.01)
            assert loop.hold(key) == key
            held[key] = loop.held[key].version
    finally:
        loop.stop()
    scored = loop.score_held()
    assert sorted(scored) == [0, 1] and loop.held == {}
    assert [scored[k]["version"] for k in (0, 1)] == [held[0], held[1]]
    assert held[0] < held[1] < loop.core.version
    for res in scored.values():
        assert 0 <= res["raw_top1_error"] <= 1 and 0 <= res["polyak_top1_error"] <= 1
