"""The model room: GoogLeNet as a table, its loss and its Table-1 accounting.

Nothing here imports ray or mlflow; the parameter server and the tracker wrap it from outside.
"""

from distinception.model.accounting import format_summary, summarize
from distinception.model.googlenet import (
    INCEPTION_TABLE,
    STAGES,
    VARIANTS,
    GoogLeNet,
    GoogLeNetOutputs,
    InceptionSpec,
    VariantSpec,
    build_model,
)
from distinception.model.loss import googlenet_loss

__all__ = [
    "INCEPTION_TABLE",
    "STAGES",
    "VARIANTS",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "InceptionSpec",
    "VariantSpec",
    "build_model",
    "format_summary",
    "googlenet_loss",
    "summarize",
]
