"""The Section 5 loss: main cross-entropy plus discounted auxiliary cross-entropies."""

from __future__ import annotations

import math

import pytest
import torch

from distinception.model import GoogLeNetOutputs, classifier_loss

CLASSES = 5
TARGET = torch.tensor([0, 0])


def _logits_with_target_logit(value: float) -> torch.Tensor:
    """Two rows whose target logit is `value` and every other logit 0."""
    logits = torch.zeros(2, CLASSES)
    logits[:, 0] = value
    return logits


def _ce(value: float) -> float:
    # -log softmax of the target: log(e^v + (C-1) e^0) - v
    return math.log(math.exp(value) + CLASSES - 1) - value


def _outputs() -> GoogLeNetOutputs:
    return GoogLeNetOutputs(
        logits=_logits_with_target_logit(0.0),
        aux1=_logits_with_target_logit(2.0),
        aux2=_logits_with_target_logit(-1.0),
    )


def test_known_cross_entropies():
    assert _ce(0.0) == pytest.approx(math.log(CLASSES))
    got = classifier_loss(_outputs(), TARGET)
    want = _ce(0.0) + 0.3 * (_ce(2.0) + _ce(-1.0))
    assert got.item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.3, 0.5, 1.0])
def test_aux_weight_is_configurable(weight: float):
    got = classifier_loss(_outputs(), TARGET, aux_weight=weight)
    want = _ce(0.0) + weight * (_ce(2.0) + _ce(-1.0))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_tensor_outputs_give_plain_cross_entropy():
    got = classifier_loss(_logits_with_target_logit(2.0), TARGET, aux_weight=0.3)
    assert got.item() == pytest.approx(_ce(2.0), rel=1e-6)


def test_aux_gradients_are_scaled_by_the_weight():
    outputs = GoogLeNetOutputs(*(t.clone().requires_grad_() for t in _outputs()))
    classifier_loss(outputs, TARGET).backward()
    alone = _logits_with_target_logit(2.0).requires_grad_()
    classifier_loss(alone, TARGET).backward()
    torch.testing.assert_close(outputs.aux1.grad, 0.3 * alone.grad)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="aux_weight"):
        classifier_loss(_outputs(), TARGET, aux_weight=-0.1)
    with pytest.raises(TypeError, match="NamedTuple of logits"):
        classifier_loss(tuple(_outputs()), TARGET)  # type: ignore[arg-type]
