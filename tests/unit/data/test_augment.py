import math

import pytest
import torch
from torchvision.transforms import v2

from distinception.config import AugmentConfig
from distinception.data.augment import (
    MEAN,
    STD,
    Lighting,
    RandomResizedCropMixed,
    build_train_transform,
    resize,
)


def _crop(t: v2.Compose) -> RandomResizedCropMixed:
    return next(s for s in t.transforms if isinstance(s, RandomResizedCropMixed))


def test_crop_areas_and_aspects_span_the_configured_ranges():
    torch.manual_seed(0)
    augment = AugmentConfig(area_min=0.08, area_max=1.0, aspect_min=3 / 4, aspect_max=4 / 3)
    crop = _crop(build_train_transform(augment, 32))
    img = torch.zeros(3, 400, 400, dtype=torch.uint8)
    areas, aspects = [], []
    for _ in range(3000):
        p = crop.make_params([img])
        areas.append(p["height"] * p["width"] / 400**2)
        aspects.append(p["width"] / p["height"])
    areas_t, aspects_t = torch.tensor(areas), torch.tensor(aspects)
    assert areas_t.min() < 0.1 and areas_t.max() > 0.95
    assert areas_t.min() >= 0.075 and areas_t.max() <= 1.0
    # Area is drawn uniformly: the median sits near the middle of [0.08, 1] (edge fallbacks aside).
    assert 0.45 < float(areas_t.median()) < 0.6
    assert aspects_t.min() >= 0.74 and aspects_t.max() <= 1.34
    assert aspects_t.min() < 0.77 and aspects_t.max() > 1.3


def test_narrow_recipe_gives_narrow_crops():
    torch.manual_seed(1)
    augment = AugmentConfig(area_min=0.5, area_max=0.6, aspect_min=1.0, aspect_max=1.0)
    crop = _crop(build_train_transform(augment, 32))
    img = torch.zeros(3, 200, 200, dtype=torch.uint8)
    for _ in range(200):
        p = crop.make_params([img])
        assert 0.49 <= p["height"] * p["width"] / 200**2 <= 0.61
        assert p["height"] == p["width"]


def test_random_interpolation_draws_all_four_fixed_draws_one():
    torch.manual_seed(0)
    crop = _crop(build_train_transform(AugmentConfig(interpolation="random"), 16))
    img = torch.zeros(3, 40, 40, dtype=torch.uint8)
    seen = [crop.make_params([img])["mode"] for _ in range(400)]
    counts = {m: seen.count(m) for m in ("bilinear", "area", "nearest", "bicubic")}
    assert all(70 < n < 130 for n in counts.values()), counts
    fixed = _crop(build_train_transform(AugmentConfig(interpolation="nearest"), 16))
    assert {fixed.make_params([img])["mode"] for _ in range(20)} == {"nearest"}


def test_interpolation_modes_differ_and_area_averages():
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    img[:, ::2, ::2] = 255  # a fine grid: every mode resizes it differently
    outs = {m: resize(img, (4, 4), m) for m in ("bilinear", "area", "nearest", "bicubic")}
    assert torch.equal(outs["area"], torch.full((3, 4, 4), 64, dtype=torch.uint8))
    assert all(o.dtype == torch.uint8 and o.shape == (3, 4, 4) for o in outs.values())
    torch.manual_seed(0)
    noise = torch.randint(0, 256, (3, 13, 13), dtype=torch.uint8)
    outs = {m: resize(noise, (5, 5), m) for m in ("bilinear", "area", "nearest", "bicubic")}
    assert len({tuple(o.flatten().tolist()) for o in outs.values()}) == 4


def test_photometric_factors_and_random_order():
    augment = AugmentConfig(photometric=0.5)
    jitter = next(
        s for s in build_train_transform(augment, 16).transforms if isinstance(s, v2.ColorJitter)
    )
    assert jitter.brightness == jitter.contrast == jitter.saturation == (0.5, 1.5)
    assert jitter.hue is None
    torch.manual_seed(0)
    orders = set()
    for _ in range(200):
        p = jitter.make_params([])
        assert all(
            0.5 <= p[k] <= 1.5
            for k in ("brightness_factor", "contrast_factor", "saturation_factor")
        )
        orders.add(tuple(i for i in p["fn_idx"].tolist() if i != 3))
    assert len(orders) == 6  # every order of brightness, contrast, saturation occurs
    off = build_train_transform(AugmentConfig(photometric=0.0, lighting=0.0), 16)
    assert not any(isinstance(s, (v2.ColorJitter, Lighting)) for s in off.transforms)


def test_lighting_moves_along_the_pca_directions_with_the_configured_std():
    torch.manual_seed(0)
    light = Lighting(0.1)
    shifts = torch.stack([light.make_params([])["rgb"] for _ in range(4000)])
    eigvec = light._eigvec
    coeff = shifts @ eigvec  # back to eigen-coordinates: alpha_k * eigval_k
    std = coeff.std(0) / light._eigval
    assert torch.allclose(std, torch.full((3,), 0.1), rtol=0.1)
    img = torch.full((3, 4, 4), 0.5)
    out = light(img)
    assert out.shape == img.shape and not torch.equal(out, img)
    assert torch.allclose(out - img, (out - img)[:, :1, :1].expand_as(img))  # same shift per pixel
    with pytest.raises(TypeError, match="float image"):
        light(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_train_transform_output():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = build_train_transform(AugmentConfig(), 32)(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    none = AugmentConfig(
        area_min=1.0, aspect_min=1.0, aspect_max=1.0, flip=False, photometric=0.0, lighting=0.0
    )
    grey = torch.full((3, 40, 40), 128, dtype=torch.uint8)
    out = build_train_transform(none, 20)(grey)
    expected = (128 / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(out[:, 5, 5], expected, atol=1e-5)
    assert math.isclose(float(out[0].std()), 0.0, abs_tol=1e-6)
