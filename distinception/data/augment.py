"""Training augments and evaluation transforms as `torchvision.transforms.v2` pipelines on
uint8 images.

The training augment is the paper's Section 6 prescription: a crop whose area is uniform in
[area_min, area_max] of the image and whose aspect ratio is in [aspect_min, aspect_max] (drawn
log-uniformly, as `RandomResizedCrop` does), resized with a fixed or per-image random
interpolation; a horizontal flip; Howard's photometric distortions (brightness, contrast and
saturation in a random order, each factor uniform in [1-s, 1+s]: `ColorJitter` with no hue
draws `torch.randperm` over its four operations, so the order is random per image); then
AlexNet's PCA lighting noise. Everything ends normalised with the ImageNet mean and std.

Interpolation names follow the four resize methods the paper lists (TensorFlow's names):

- ``bilinear`` and ``bicubic``: plain, not antialiased (each output pixel reads a 2x2 or 4x4
  neighbourhood, as classic image libraries resize);
- ``nearest``: nearest neighbour;
- ``area``: pixel-area averaging, `torch.nn.functional.interpolate(mode="area")` (adaptive
  average pooling). torchvision's BOX mode exists only for PIL images, and this is its tensor
  counterpart: exact for integer down-scaling factors, a close box filter otherwise, and like
  TensorFlow's area resize it replicates pixels when up-scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as NF
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from distinception.config import AugmentConfig

#: ImageNet channel statistics on [0, 1] pixels, used for every model input.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

#: AlexNet's principal components of ImageNet RGB pixels on [0, 1] (eigenvalues and the
#: eigenvectors as columns), the basis of its lighting noise.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

INTERPOLATION_MODES = ("bilinear", "area", "nearest", "bicubic")

#: The ratio of the resized short side to the crop side in single-crop evaluation (256/224).
EVAL_RESIZE_RATIO = 256 / 224


def resize(img: torch.Tensor, size: Sequence[int], mode: str) -> torch.Tensor:
    """Resize a uint8 image (or a batch) to (h, w) with one of `INTERPOLATION_MODES`."""
    if mode == "area":
        x = img.unsqueeze(0) if img.ndim == 3 else img
        out = NF.interpolate(x.float(), size=tuple(size), mode="area")
        out = out.round_().clamp_(0, 255).to(img.dtype)
        return out[0] if img.ndim == 3 else out
    if mode not in INTERPOLATION_MODES:
        raise ValueError(
            f"interpolation={mode!r}: expected one of {', '.join(INTERPOLATION_MODES)}"
        )
    return F.resize(img, list(size), interpolation=InterpolationMode(mode), antialias=False)


class RandomResizedCropMixed(v2.RandomResizedCrop):
    """`RandomResizedCrop` whose interpolation is drawn per image from `modes`.

    The crop box is drawn by the parent class, so area and aspect statistics are torchvision's;
    only the resize differs, to make `area` available on tensors (see the module docstring).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        modes: Sequence[str] = INTERPOLATION_MODES,
    ) -> None:
        super().__init__(size, scale=scale, ratio=ratio, antialias=False)
        for mode in modes:
            if mode not in INTERPOLATION_MODES:
                raise ValueError(
                    f"interpolation={mode!r}: expected one of {', '.join(INTERPOLATION_MODES)}"
                )
        self.modes = tuple(modes)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        k = 0 if len(self.modes) == 1 else int(torch.randint(len(self.modes), ()).item())
        params["mode"] = self.modes[k]
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        crop = F.crop(inpt, params["top"], params["left"], params["height"], params["width"])
        return resize(crop, self.size, params["mode"])


class Lighting(v2.Transform):
    """AlexNet's PCA lighting noise: add sum_k alpha_k * eigval_k * eigvec_k to every pixel,
    alpha_k ~ N(0, std), on float RGB images in [0, 1] (before normalisation).

    It shifts the image along the directions natural illumination changes vary most, so the
    network learns invariance to light intensity and colour, not to arbitrary colour noise.
    """

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = float(std)
        self._eigval = torch.tensor(PCA_EIGVAL)
        self._eigvec = torch.tensor(PCA_EIGVEC)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        alpha = torch.randn(3) * self.std
        return {"rgb": self._eigvec @ (alpha * self._eigval)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not inpt.is_floating_point():
            raise TypeError("Lighting expects a float image; put it after ToDtype(float32)")
        return inpt + params["rgb"].to(inpt.dtype).view(3, 1, 1)


def build_train_transform(augment: AugmentConfig, size: int) -> v2.Compose:
    """uint8 [3, H, W] -> float32 [3, size, size], normalised, following `augment`."""
    modes = INTERPOLATION_MODES if augment.interpolation == "random" else (augment.interpolation,)
    steps: list[Any] = [
        RandomResizedCropMixed(
            size,
            scale=(augment.area_min, augment.area_max),
            ratio=(augment.aspect_min, augment.aspect_max),
            modes=modes,
        )
    ]
    if augment.flip:
        steps.append(v2.RandomHorizontalFlip())
    if augment.photometric > 0:
        s = augment.photometric
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if augment.lighting > 0:
        steps.append(Lighting(augment.lighting))
    steps.append(v2.Normalize(MEAN, STD))
    return v2.Compose(steps)


def eval_resize(size: int) -> int:
    """The short side an image is resized to before a `size` center crop (256 for 224)."""
    return round(size * EVAL_RESIZE_RATIO)


def build_eval_transform(size: int) -> v2.Compose:
    """uint8 [3, H, W] -> float32 [3, size, size]: short side to size*256/224, center crop."""
    return v2.Compose(
        [
            v2.Resize(eval_resize(size), antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(MEAN, STD),
        ]
    )


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 normalised, for views built outside a pipeline."""
    return F.normalize(F.to_dtype(images, torch.float32, scale=True), list(MEAN), list(STD))
