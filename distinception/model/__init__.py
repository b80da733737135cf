"""The model room: GoogLeNet as a table, any other classifier by name, the loss and the
Table-1 accounting.

Nothing here imports ray or mlflow; the parameter server and the tracker wrap it from outside.
"""

from distinception.model.accounting import format_summary, summarize
from distinception.model.archs import build_model, describe_model
from distinception.model.googlenet import (
    INCEPTION_TABLE,
    STAGES,
    VARIANTS,
    GoogLeNet,
    GoogLeNetOutputs,
    InceptionSpec,
    VariantSpec,
    build_googlenet,
)
from distinception.model.loss import classifier_loss

__all__ = [
    "INCEPTION_TABLE",
    "STAGES",
    "VARIANTS",
    "GoogLeNet",
    "GoogLeNetOutputs",
    "InceptionSpec",
    "VariantSpec",
    "build_googlenet",
    "build_model",
    "classifier_loss",
    "describe_model",
    "format_summary",
    "summarize",
]
