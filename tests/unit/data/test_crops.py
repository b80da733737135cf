import pytest
import torch
from torchvision.transforms.v2 import functional as F

from distinception.data.augment import build_eval_transform, eval_resize, normalize
from distinception.data.crops import paper_short_sides, resized_shape, view_boxes, views
from distinception.data.shards import DataError


def _inside(box, size):
    h, w = box.resized
    return (
        box.top >= 0
        and box.left >= 0
        and box.top + box.height <= h
        and box.left + box.width <= w
        and (box.height, box.width) in {(size, size), (min(h, w), min(h, w))}
    )


@pytest.mark.parametrize("scheme, count", [("center", 1), ("ten", 10), ("paper144", 144)])
@pytest.mark.parametrize("hw", [(300, 400), (400, 300), (256, 256), (37, 90)])
def test_counts_and_every_box_inside_its_image(scheme, count, hw):
    boxes = view_boxes(*hw, scheme, 224)
    assert len(boxes) == count
    assert all(_inside(b, 224) for b in boxes)


def test_center_is_the_eval_transform():
    img = torch.randint(0, 256, (3, 50, 71), dtype=torch.uint8)
    (box,) = view_boxes(50, 71, "center", 32)
    assert box.resized == (eval_resize(32), int(eval_resize(32) * 71 / 50))
    expected = build_eval_transform(32)(img)
    assert torch.allclose(normalize(views(img, "center", 32))[0], expected, atol=1e-6)


def test_ten_is_torchvisions_ten_crop_of_the_resized_image():
    # Even margins (46x62 around 40x40): with odd ones torchvision's center crop of the mirrored
    # image sits one pixel off the mirror of the center crop, which is what we take.
    img = torch.randint(0, 256, (3, 60, 81), dtype=torch.uint8)
    resized = F.resize(img, list(resized_shape(60, 81, eval_resize(40))), antialias=True)
    expected = torch.stack(F.ten_crop(resized, [40, 40]))
    out = views(img, "ten", 40)
    assert torch.equal(out[:5], expected[:5])
    # torchvision crops the mirrored image; we mirror each crop: the same five, in another order.
    assert sorted(map(_key, out[5:])) == sorted(map(_key, expected[5:]))


def _key(t: torch.Tensor) -> tuple:
    return tuple(t.flatten().tolist())


def test_mirrors_follow_their_crops():
    img = torch.randint(0, 256, (3, 40, 52), dtype=torch.uint8)
    for scheme, half in (("ten", 5), ("paper144", 6)):
        boxes = view_boxes(40, 52, scheme, 24)
        out = views(img, scheme, 24)
        for i, box in enumerate(boxes):
            if box.flip:
                twin = i - half
                assert not boxes[twin].flip and boxes[twin].top == box.top
                assert torch.equal(out[i], out[twin].flip(-1))


def test_paper144_geometry_landscape():
    boxes = view_boxes(300, 400, "paper144", 224)
    assert paper_short_sides(224) == (256, 288, 320, 352)
    assert sorted({b.resized for b in boxes}) == [(256, 341), (288, 384), (320, 426), (352, 469)]
    at256 = [b for b in boxes if b.resized == (256, 341) and not b.flip]
    wholes = [(b.top, b.left) for b in at256 if b.height == 256]
    assert wholes == [(0, 0), (0, 42), (0, 85)]  # left, center, right squares
    assert all(b.top == 0 for b in at256 if b.height == 256)
    crops = [(b.top, b.left) for b in at256[:5]]  # first square: 4 corners then center
    assert crops == [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]


def test_paper144_geometry_portrait_takes_top_center_bottom():
    boxes = view_boxes(400, 300, "paper144", 224)
    at256 = [b for b in boxes if b.resized == (341, 256) and not b.flip and b.height == 256]
    assert [(b.top, b.left) for b in at256] == [(0, 0), (42, 0), (85, 0)]


def test_paper144_scales_with_the_model_input():
    assert paper_short_sides(64) == (73, 82, 91, 101)
    boxes = view_boxes(64, 64, "paper144", 64)
    assert {b.resized for b in boxes} == {(73, 73), (82, 82), (91, 91), (101, 101)}
    out = views(torch.zeros(3, 64, 64, dtype=torch.uint8), "paper144", 64)
    assert out.shape == (144, 3, 64, 64) and out.dtype == torch.uint8


def test_unknown_scheme_is_one_line():
    with pytest.raises(DataError, match=r"scheme='twelve': expected one of center, ten, paper144"):
        view_boxes(10, 10, "twelve", 8)
