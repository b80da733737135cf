import torch

from distinception.config import from_dict
from distinception.ps.averager import AveragerCore
from distinception.recipes import get_recipe


def _cfg(**averager):
    return from_dict({"averager": averager}, get_recipe("tiny"))


def _batches(n=2, size=32, classes=4):
    g = torch.Generator().manual_seed(0)
    views = torch.randn(n * 8, 1, 3, size, size, generator=g)
    labels = torch.randint(0, classes, (n * 8,), generator=g)
    return [(views[i : i + 8], labels[i : i + 8]) for i in range(0, n * 8, 8)]


def test_uniform_polyak_is_the_mean_of_observed_weights():
    core = AveragerCore(_cfg(polyak="uniform", polyak_start=1), 4)
    n = core.flat.numel()
    core.observe(0, torch.full((n,), 100.0))  # before the start: not averaged
    for v, value in enumerate([1.0, 2.0, 6.0], start=1):
        assert core.observe(v, torch.full((n,), value))
    assert not core.observe(3, torch.full((n,), 50.0))  # same version again: ignored
    avg = torch.cat([p.detach().flatten() for p in core.averaged.module.parameters()])
    torch.testing.assert_close(avg, torch.full((n,), 3.0))
    assert core.samples == 3


def test_ema_follows_the_decay():
    core = AveragerCore(_cfg(polyak="ema", ema_decay=0.5), 4)
    n = core.flat.numel()
    core.observe(1, torch.zeros(n))
    core.observe(2, torch.full((n,), 4.0))
    avg = torch.cat([p.detach().flatten() for p in core.averaged.module.parameters()])
    torch.testing.assert_close(avg, torch.full((n,), 2.0))


def test_evaluation_recomputes_bn_statistics_and_reports_both_weights():
    core = AveragerCore(_cfg(polyak="uniform"), 4)
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
    a = AveragerCore(_cfg(), 4)
    a.observe(3, torch.randn(a.flat.numel()))
    b = AveragerCore(_cfg(), 4)
    b.load_state_dict(a.state_dict())
    assert (b.version, b.samples) == (3, 1)
    for p, q in zip(a.averaged.parameters(), b.averaged.parameters(), strict=True):
        torch.testing.assert_close(p, q)
