"""Evaluation views: 1 (center), 10 (corners + center, mirrored) and the paper's 144 crops.

Geometry and pixels are separate: `view_boxes` says where every view comes from, `views`
cuts them out. The boxes are what the tests check, and the cutting reuses one resize per
scale, which is what keeps 144 views per image affordable.

Section 7's 144-crop scheme, for a model input of `size` (224 in the paper): the short side is
resized to 256, 288, 320 and 352 (scaled by size/224 for smaller inputs); the left, center and
right squares are taken (top, center and bottom for portrait images); from each square the four
corner and the center `size` crops, plus the whole square resized to `size`; and the mirror of
each: 4 x 3 x 6 x 2 = 144 views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from distinception.config import CROP_SCHEMES as SCHEMES
from distinception.data.augment import eval_resize
from distinception.data.shards import DataError

PAPER_SHORT_SIDES = (256, 288, 320, 352)


@dataclass(frozen=True)
class ViewBox:
    """One view: resize the image to `resized` (h, w), cut the box (top, left, height, width),
    resize the cut to the model input if it is not that size already, then mirror if `flip`."""

    resized: tuple[int, int]
    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def resized_shape(height: int, width: int, short: int) -> tuple[int, int]:
    """(h, w) after resizing the short side to `short`, rounding the long side as torchvision
    does, so a `center` view equals `build_eval_transform` pixel for pixel."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def _center(outer: int, inner: int) -> int:
    return round((outer - inner) / 2.0)


def _five(resized: tuple[int, int], top: int, left: int, h: int, w: int, size: int) -> list:
    """Corners then center of a `size` square inside the box (top, left, h, w)."""
    return [
        ViewBox(resized, top, left, size, size),
        ViewBox(resized, top, left + w - size, size, size),
        ViewBox(resized, top + h - size, left, size, size),
        ViewBox(resized, top + h - size, left + w - size, size, size),
        ViewBox(resized, top + _center(h, size), left + _center(w, size), size, size),
    ]


def _mirrored(boxes: list[ViewBox]) -> list[ViewBox]:
    return [ViewBox(b.resized, b.top, b.left, b.height, b.width, True) for b in boxes]


def paper_short_sides(size: int) -> tuple[int, ...]:
    """The four short sides of the 144-crop scheme for a model input of `size`."""
    return tuple(round(s * size / 224) for s in PAPER_SHORT_SIDES)


def view_boxes(height: int, width: int, scheme: str, size: int) -> list[ViewBox]:
    """Where each view of an image of (height, width) comes from, in output order."""
    if scheme not in SCHEMES:
        raise DataError(f"scheme={scheme!r}: expected one of {', '.join(SCHEMES)}")
    if height < 1 or width < 1 or size < 1:
        raise DataError(f"image {height}x{width}, size {size}: expected positive sizes")
    if scheme in ("center", "ten"):
        resized = resized_shape(height, width, eval_resize(size))
        h, w = resized
        if scheme == "center":
            return [ViewBox(resized, _center(h, size), _center(w, size), size, size)]
        five = _five(resized, 0, 0, h, w, size)
        return five + _mirrored(five)
    boxes: list[ViewBox] = []
    for short in paper_short_sides(size):
        resized = resized_shape(height, width, short)
        h, w = resized
        long = max(h, w)
        for offset in (0, _center(long, short), long - short):
            top, left = (0, offset) if w >= h else (offset, 0)
            six = [*_five(resized, top, left, short, short, size)]
            six.append(ViewBox(resized, top, left, short, short))
            boxes += six + _mirrored(six)
    return boxes


def views(img: torch.Tensor, scheme: str, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [V, 3, size, size], V = 1, 10 or 144 by `scheme`."""
    if img.ndim != 3:
        raise DataError(f"image shape {tuple(img.shape)}: expected [3, H, W]")
    boxes = view_boxes(img.shape[-2], img.shape[-1], scheme, size)
    scaled: dict[tuple[int, int], torch.Tensor] = {}
    out = torch.empty((len(boxes), img.shape[0], size, size), dtype=img.dtype)
    for i, box in enumerate(boxes):
        if box.resized not in scaled:
            scaled[box.resized] = F.resize(
                img, list(box.resized), interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        cut = scaled[box.resized][
            :, box.top : box.top + box.height, box.left : box.left + box.width
        ]
        if (box.height, box.width) != (size, size):
            cut = F.resize(
                cut, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True
            )
        out[i] = cut.flip(-1) if box.flip else cut
    return out
