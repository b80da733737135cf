"""The quadrant data set and the tiny job that trains on it, shared by the parameter-server tests.

The class is the quadrant holding a bright square, so it changes under a mirror: every job here
trains without flips, or the reachable error would be capped at 0.5.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from distinception.config import JobConfig, from_dict
from distinception.recipes import get_recipe

CLASSES = ("top-left", "top-right", "bottom-left", "bottom-right")


def _quadrant_jpegs(n: int, size: int, seed: int = 0) -> Iterator[tuple[bytes, int]]:
    """`n` JPEGs with labels cycling 0..3: the class is the quadrant holding a bright textured
    square, on noise."""
    import numpy as np
    import torch
    from torchvision.io import encode_jpeg

    rng = np.random.default_rng(seed)
    half = size // 2
    for i in range(n):
        label = i % 4
        img = rng.integers(0, 90, (3, size, size)).astype(np.uint8)
        r, c = divmod(label, 2)
        side = int(rng.integers(half // 2, half))
        top = r * half + int(rng.integers(0, half - side + 1))
        left = c * half + int(rng.integers(0, half - side + 1))
        img[:, top : top + side, left : left + side] = rng.integers(150, 256, (3, 1, 1))
        yield encode_jpeg(torch.from_numpy(img), quality=90).numpy().tobytes(), label


def write_quadrant_set(out: str, *, per_class: int, val_per_class: int, size: int = 32) -> str:
    """A quickly learnable set through the real writer (`out` a directory or a `pyarrow.fs`
    URI). Tests of the parameter server use it to see learning within a few thousand examples;
    the built-in set is deliberately much harder."""
    from distinception.data.shards import DatasetWriter

    images = _quadrant_jpegs(4 * (per_class + val_per_class), size)
    with DatasetWriter(out, list(CLASSES)) as writer:
        for split, n in (("train", per_class), ("val", val_per_class)):
            for i in range(4 * n):
                jpeg, label = next(images)
                writer.write(split, jpeg, label, f"{split}/{i}")
    return out


def write_quadrant_tree(out: Path, *, per_class: int, size: int = 32) -> Path:
    """The same images as an ImageFolder tree (one folder per class), for `data import`."""
    for i, (jpeg, label) in enumerate(_quadrant_jpegs(4 * per_class, size)):
        folder = out / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(jpeg)
    return out


def quadrant_job(data: str, uri: str, **sections: dict) -> JobConfig:
    """The tiny recipe on the quadrant set at `data`, tracked at `uri`; `sections` override
    fields per config section, e.g. `run={"max_examples": 6000}`. The model is not logged
    unless asked (`tracking={"log_model": True}`): exporting it costs seconds of each job."""
    values: dict = {
        "data": {"path": data},
        "tracking": {"tracking_uri": uri, "log_model": False},
        "augment": {"flip": False},
    }
    for key, value in sections.items():
        values.setdefault(key, {}).update(value)
    return from_dict(values, get_recipe("tiny"))
