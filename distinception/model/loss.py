"""The training loss of Section 5: the auxiliary classifiers' losses are added with a discount.

The paper weights each auxiliary loss by 0.3 and drops the heads at inference; a model in eval
mode (or built without aux heads) returns a plain tensor, for which the loss is plain
cross-entropy, so the same call serves training and validation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distinception.model.googlenet import GoogLeNetOutputs


def googlenet_loss(
    outputs: torch.Tensor | GoogLeNetOutputs,
    target: torch.Tensor,
    aux_weight: float = 0.3,
) -> torch.Tensor:
    """CE(main) + aux_weight * (CE(aux1) + CE(aux2)), or CE(main) when there are no aux outputs.

    Each term is the batch mean, so the main term means the same thing with and without heads.
    """
    if aux_weight < 0:
        raise ValueError(f"aux_weight={aux_weight!r}: expected a number >= 0")
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, target)
    if not isinstance(outputs, GoogLeNetOutputs):
        raise TypeError(
            f"outputs: expected a tensor or GoogLeNetOutputs, got {type(outputs).__name__}"
        )
    main = F.cross_entropy(outputs.logits, target)
    aux = F.cross_entropy(outputs.aux1, target) + F.cross_entropy(outputs.aux2, target)
    return main + aux_weight * aux
