"""Import a small real image set: the UCI handwritten digits that scikit-learn ships.

1,797 scans of handwritten digits (8x8, 17 grey levels, 10 classes), collected from 43 writers.
The images travel inside the scikit-learn wheel, so nothing is downloaded. This script writes
them as an ImageFolder tree of PNGs (upsampled to `--size` px, RGB) and turns that tree into
Parquet shards with the same importer as `distinception data import`, so training on it goes
through the real data path.

    python bench/import_digits.py --out ~/.cache/distinception/digits
    distinception train --recipe digits --set data.path=~/.cache/distinception/digits
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile


def write_tree(root: str, size: int) -> int:
    """The digits as `root/<digit>/<index>.png`; returns how many were written."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        os.makedirs(os.path.join(root, str(label)), exist_ok=True)
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = np.clip(image * (255.0 / 16.0), 0, 255).astype(np.uint8)
        big = Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BILINEAR)
        big.convert("RGB").save(os.path.join(root, str(label), f"{i:04d}.png"))
    return len(digits.images)


def import_digits(out: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> str:
    """Write the tree to a temporary folder and import it into `out`; returns the report."""
    from distinception.data.importer import import_tree

    out = os.path.expanduser(out)
    with tempfile.TemporaryDirectory(prefix="digits-") as tmp:
        write_tree(tmp, size)
        report = import_tree(tmp, out, val_fraction=val_fraction, seed=seed, progress=False)
    return report.format()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="~/.cache/distinception/digits", help="data set to write")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="held-out share per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    args = p.parse_args(argv)
    if args.size < 8:
        p.error(f"--size={args.size}: expected an integer >= 8")
    if not 0 < args.val_fraction < 1:
        p.error(f"--val-fraction={args.val_fraction}: expected a number in (0, 1)")
    print(import_digits(args.out, args.size, args.val_fraction, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
