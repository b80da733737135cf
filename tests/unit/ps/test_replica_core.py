"""The replica's compute step on its own (no Ray): precision, gradient hand-off, accumulation."""

import pytest
import torch

from distinception.config import ConfigError, ModelConfig, TransportConfig
from distinception.ps.replica import ReplicaCore

MODEL = ModelConfig(variant="bn", width=0.125, input_size=32)


def _core(compute_dtype: str = "float32") -> ReplicaCore:
    torch.manual_seed(0)
    core = ReplicaCore(MODEL, 4, iter(()), compute_dtype=compute_dtype)
    core.model.eval()  # no dropout, batch statistics fixed: the same function on every call
    return core


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_gradient_is_the_mean_over_accumulated_batches_and_is_handed_off_zeroed():
    core = _core()
    loss = core.compute(_batch())
    assert loss.dim() == 0 and torch.isfinite(loss)  # a tensor: a GPU is not made to wait
    one, examples, landed = core.take_gradient()
    landed()
    assert examples == 8 and float(one.abs().sum()) > 0
    assert float(core.grad.abs().sum()) == 0  # zeroed for the next push

    core.compute(_batch())
    core.compute(_batch())
    mean, examples, landed = core.take_gradient()
    landed()
    assert examples == 16
    torch.testing.assert_close(mean, one)
    # A copy, not a view: the next step cannot change what is being pushed.
    core.compute(_batch())
    torch.testing.assert_close(mean, one)


def test_bfloat16_compute_keeps_fp32_weights_and_gradients_close_to_fp32():
    fp32, bf16 = _core("float32"), _core("bfloat16")
    bf16.flat.copy_(fp32.flat)
    batch = _batch()
    loss32, loss16 = fp32.compute(batch), bf16.compute(batch)
    g32, _, _ = fp32.take_gradient()
    g16, _, _ = bf16.take_gradient()
    assert bf16.flat.dtype == g16.dtype == torch.float32
    assert abs(float(loss32) - float(loss16)) < 0.05
    assert not torch.equal(g32, g16)  # autocast did run in bf16
    assert float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)) > 0.98


def test_compute_dtype_is_checked():
    with pytest.raises(ConfigError, match=r"compute_dtype.*float16"):
        TransportConfig(compute_dtype="float16")
