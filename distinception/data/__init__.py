"""The data room: Parquet shards, the built-in generated set, import, augments, crops, streams.

Nothing here imports ray or mlflow; consumers are plain iterators that an actor can own.
"""

from distinception.data.augment import (
    MEAN,
    STD,
    build_eval_transform,
    build_train_transform,
)
from distinception.data.crops import SCHEMES, view_boxes, views
from distinception.data.generated import ensure_generated, generate_dataset, shards_path
from distinception.data.importer import ImportReport, import_tree, inspect_dataset
from distinception.data.loader import (
    TrainStream,
    bn_batches,
    eval_batches,
    num_classes,
    sample_batches,
    val_batches,
)
from distinception.data.shards import (
    DataError,
    DatasetWriter,
    Manifest,
    ShardWriter,
    open_manifest,
    verify,
)

__all__ = [
    "MEAN",
    "SCHEMES",
    "STD",
    "DataError",
    "DatasetWriter",
    "ImportReport",
    "Manifest",
    "ShardWriter",
    "TrainStream",
    "bn_batches",
    "build_eval_transform",
    "build_train_transform",
    "ensure_generated",
    "eval_batches",
    "generate_dataset",
    "import_tree",
    "inspect_dataset",
    "num_classes",
    "open_manifest",
    "sample_batches",
    "shards_path",
    "val_batches",
    "verify",
    "view_boxes",
    "views",
]
