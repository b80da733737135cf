"""The training loss of Section 5: the auxiliary classifiers' losses are added with a discount.

The paper weights each auxiliary loss by 0.3 and drops the heads at inference; a model in eval
mode (or built without aux heads) returns a plain tensor, for which the loss is plain
cross-entropy, so the same call serves training and validation, and serves any classifier:
the aux weight applies only where a model returns aux outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classifier_loss(
    outputs: torch.Tensor | tuple[torch.Tensor | None, ...],
    target: torch.Tensor,
    aux_weight: float = 0.3,
) -> torch.Tensor:
    """CE(main) + aux_weight * sum(CE(aux)), or CE(main) when there are no aux outputs.

    Aux outputs come as a NamedTuple whose first field is `logits` and whose other fields are
    the aux heads' logits: this project's `GoogLeNetOutputs`, torchvision's `GoogLeNetOutputs`
    and `InceptionOutputs` (a head that is None is skipped). A plain tuple is refused: which
    element is the main output would be a guess. Each term is the batch mean, so the main term
    means the same thing with and without heads.
    """
    if aux_weight < 0:
        raise ValueError(f"aux_weight={aux_weight!r}: expected a number >= 0")
    if isinstance(outputs, torch.Tensor):
        return F.cross_entropy(outputs, target)
    fields = getattr(outputs, "_fields", ())
    if not fields or fields[0] != "logits":
        raise TypeError(
            f"outputs: expected a tensor or a NamedTuple of logits and aux logits, got "
            f"{type(outputs).__name__}"
        )
    main, *heads = outputs
    loss = F.cross_entropy(main, target)
    aux = [F.cross_entropy(head, target) for head in heads if head is not None]
    return loss + aux_weight * sum(aux) if aux else loss
