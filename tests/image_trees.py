"""Image trees with every kind of file an import must handle, and what an import stored, for
both import engines' tests."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image


def picture(seed: int, size=(24, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def save(path, seed, fmt, **kw) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    picture(seed).save(path, fmt, **kw)


def image_bytes(seed, fmt) -> bytes:
    buf = io.BytesIO()
    picture(seed).save(buf, fmt)
    return buf.getvalue()


def write_mixed_tree(src: Path) -> Path:
    """A class-folder tree with one file of every kind the importer must handle: JPEG, PNG,
    GIF, BMP, CMYK JPEG, 16-bit PNG, a nested folder; empty, text, truncated and damaged
    files, a hidden file and a file outside the class folders."""
    save(src / "cat" / "a.jpg", 1, "JPEG", quality=90)
    save(src / "cat" / "b.png", 2, "PNG")
    save(src / "cat" / "c.gif", 3, "GIF")
    save(src / "cat" / "d.bmp", 4, "BMP")
    save(src / "cat" / "e.JPEG", 5, "JPEG")
    (src / "cat" / "empty.jpg").write_bytes(b"")
    (src / "cat" / "notes.jpg").write_text("this is a text file, not a picture\n")
    jpeg = image_bytes(6, "JPEG")
    (src / "cat" / "half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    bmp = image_bytes(7, "BMP")
    (src / "cat" / "broken.bmp").write_bytes(bmp[:60])
    (src / "cat" / ".DS_Store").write_bytes(b"\0\0")
    for i in range(10):
        save(src / "dog" / f"{i:02d}.jpg", 100 + i, "JPEG")
    save(src / "dog" / "nested" / "deep.png", 200, "PNG")
    picture(8).convert("CMYK").save(src / "dog" / "cmyk.jpg", "JPEG")
    Image.fromarray((np.arange(24 * 20).reshape(24, 20) * 97 % 65535).astype(np.uint16)).save(
        src / "dog" / "sixteen.png"
    )
    (src / "README.txt").write_text("not in a class folder")
    return src


def stored_rows(path: str) -> dict[str, list[tuple]]:
    """Every stored row (key, label, image bytes) of every split of the set at `path`, in
    stored order: two imports wrote the same set when these are equal."""
    from distinception.data.shards import iter_batches, open_manifest

    m = open_manifest(path)
    return {
        split: [
            row
            for b in iter_batches(m, split, columns=("key", "label", "image"))
            for row in zip(*(b.column(c).to_pylist() for c in b.schema.names), strict=True)
        ]
        for split in m.splits
    }
