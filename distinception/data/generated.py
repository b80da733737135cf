"""The built-in data set: textured shapes at widely varying scales on cluttered backgrounds.

A class is a (shape, texture) pair: a disc filled with stripes is one class, a disc filled with
dots another, a square filled with stripes a third. The target's diameter is anywhere from 0.35
to 0.9 of the image side (log-uniform) and its texture scales with it, so one class shows its
cues at pixel scales 2.6x apart (stripe periods of about 9 to 29 px at 64 px), and the paper's
crops (8% to 100% of the area, resized to the input) stretch that to about 9x in training. A
small filter sees the texture of a small target, only a wide receptive field sees that of a
large one, and telling the shape needs the whole object; distractors from 4 px to 60% of the
image repeat the same parts (outlines of every shape, textured patches without a target's
outline, strokes, soft blobs). That is the situation Inception's parallel 1x1/3x3/5x5 branches
and its depth are built for (though a model with only 1x1 and 3x3 branches ends level or
ahead, at 64, 128 and 224 px, and on a variant whose classes pair a coarse and a fine texture:
BENCHMARKS.md, "The built-in set"). Colours (tinted greys: an object stands out from its
ground by brightness), rotation, lighting gradients, colour casts and sensor noise are random,
so neither colour, position nor any single patch gives the class away: a linear classifier on
raw pixels stays near chance (BENCHMARKS.md has the figures).

Generation is seeded per image (seed, split, index), so the bytes are the same for the same
parameters on any machine with the same JPEG encoder, in any order.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torchvision.io import encode_jpeg
from tqdm import tqdm

from distinception.config import DataConfig, JobConfig
from distinception.data.shards import DataError, DatasetWriter, Manifest, open_manifest, verify
from distinception.uris import redact

#: Bumped whenever the pictures change, so cached sets of an older generator are not reused.
GENERATOR_VERSION = 3
SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond", "star")
TEXTURES = ("solid", "stripes", "checker", "dots", "rings", "grid")
#: 7 and 6 are coprime, so class c = (shape c mod 7, texture c mod 6) is a distinct pair for
#: every c below 42, and the first few classes already share shapes and textures pairwise:
#: neither factor alone names the class.
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
JPEG_QUALITY = 90
SUPERSAMPLE = 2
_SPLITS = {"train": 0, "val": 1}

#: The knobs of difficulty, as fractions of the image side where they are sizes.
TARGET_DIAMETER = (0.35, 0.9)  # log-uniform
TEXTURE_PERIODS = (2.0, 2.5)  # texture periods across the target's diameter
CLUTTER_COUNT = (1, 4)  # inclusive
CLUTTER_RADIUS = (0.03, 0.3)  # log-uniform
CLUTTER_KINDS = ("outline", "stroke", "blob", "patch")
MAX_ROTATION = 0.3  # radians either way
MAX_TINT = 0.2  # per-channel offset from an object's grey level
BRIGHTNESS_CONTRAST = 0.3  # between a target's colours, and the target and its ground


def class_names(classes: int) -> list[str]:
    return [f"{SHAPES[c % len(SHAPES)]}-{TEXTURES[c % len(TEXTURES)]}" for c in range(classes)]


def shape_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a shape of radius 1 centred at the origin (v points down)."""
    name = SHAPES[kind]
    if name == "disc":
        return u * u + v * v <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if name == "triangle":
        return (v <= 0.5) & (1.732 * u - v <= 1.0) & (-1.732 * u - v <= 1.0)
    if name == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if name == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.25)
    if name == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if name == "star":
        r = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        return r <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 1.5
    raise AssertionError(name)


def texture_mask(kind: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where colour B shows through colour A; u, v are in texture periods."""
    name = TEXTURES[kind]
    if name == "solid":
        return np.zeros(u.shape, dtype=bool)
    if name == "stripes":
        return np.sin(2 * np.pi * u) > 0
    if name == "checker":
        return np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v) > 0
    if name == "dots":
        fu, fv = u - np.floor(u) - 0.5, v - np.floor(v) - 0.5
        return fu * fu + fv * fv < 0.09
    if name == "rings":
        return np.sin(2 * np.pi * np.sqrt(u * u + v * v)) > 0
    if name == "grid":
        return ((u - np.floor(u)) < 0.28) | ((v - np.floor(v)) < 0.28)
    raise AssertionError(name)


class Canvas:
    """A float RGB image at SUPERSAMPLE x the output size; objects paint into bounding boxes
    only, which keeps a small distractor as cheap as its few pixels."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self.n = size * SUPERSAMPLE
        self.rng = rng
        self.img = np.empty((self.n, self.n, 3), dtype=np.float32)

    def local(
        self, cx: float, cy: float, radius: float, angle: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Unit coordinates of the object's frame over its bounding box, or None if off canvas."""
        n, s = self.n, SUPERSAMPLE
        reach = radius * 1.05 * s
        x0, x1 = max(int(cx * s - reach), 0), min(int(cx * s + reach) + 2, n)
        y0, y1 = max(int(cy * s - reach), 0), min(int(cy * s + reach) + 2, n)
        if x0 >= x1 or y0 >= y1:
            return None
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) / s - cy
        xs = (np.arange(x0, x1, dtype=np.float32) + 0.5) / s - cx
        dx, dy = xs[None, :], ys[:, None]
        c, sn = math.cos(angle), math.sin(angle)
        u = (c * dx + sn * dy) / radius
        v = (-sn * dx + c * dy) / radius
        return (slice(y0, y1), slice(x0, x1)), u, v

    def paint(self, box: tuple[slice, slice], mask: np.ndarray, colour: np.ndarray) -> None:
        self.img[box][mask] = colour

    def finish(self) -> np.ndarray:
        """Box-filter down to the output size: antialiased edges, no aliasing cues."""
        s, n = SUPERSAMPLE, self.size
        return self.img.reshape(n, s, n, s, 3).mean(axis=(1, 3))


def _colour(rng: np.random.Generator, away_from: np.ndarray | None = None) -> np.ndarray:
    """A random tinted grey, at least `BRIGHTNESS_CONTRAST` brighter or darker than `away_from`.

    Objects differ from what lies behind them in brightness, as in photographs, and only
    weakly in hue. With fully random hues (version 2) a target was often isoluminant with its
    surround, and GoogLeNet under SGD sat at chance for 35-45k examples before it found the
    shapes (a plain 6-layer CNN or Adam did not); tinted greys leave chance within 5k examples
    while every colour, brightness and tint stays random, so no colour names a class."""
    for _ in range(50):
        grey = rng.uniform(0.0, 1.0)
        c = np.clip(grey + rng.uniform(-MAX_TINT, MAX_TINT, 3), 0.0, 1.0).astype(np.float32)
        if away_from is None or abs(float(c.mean() - away_from.mean())) > BRIGHTNESS_CONTRAST:
            return c
    return (1.0 - away_from).astype(np.float32) if away_from is not None else c


def _background(cv: Canvas) -> np.ndarray:
    """Two-colour gradient plus a few low-frequency waves: cluttered but object-free."""
    rng, n = cv.rng, cv.n
    a, b = _colour(rng), _colour(rng)
    t = np.linspace(0, 1, n, dtype=np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = math.cos(angle) * t[None, :] + math.sin(angle) * t[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    cv.img[:] = a + (b - a) * ramp[..., None]
    for _ in range(3):
        f = rng.uniform(0.5, 3.0) / n
        th = rng.uniform(0, 2 * np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        proj = (math.cos(th) * t[None, :] + math.sin(th) * t[:, None]) * n
        wave = np.sin(2 * np.pi * f * proj + phase)
        cv.img += (rng.uniform(-0.12, 0.12, 3).astype(np.float32)) * wave[..., None]
    return (a + b) / 2


def _clutter(cv: Canvas, count: int) -> None:
    """Distractors that share the targets' parts but never a whole (shape, texture) target:
    outlined shapes of every kind, strokes, soft blobs and unshaped textured patches."""
    rng, size = cv.rng, cv.size
    for _ in range(count):
        kind = CLUTTER_KINDS[int(rng.integers(len(CLUTTER_KINDS)))]
        cx, cy = rng.uniform(0, size, 2)
        radius = size * math.exp(rng.uniform(*np.log(CLUTTER_RADIUS)))
        angle = rng.uniform(0, 2 * np.pi)
        frame = cv.local(cx, cy, radius, angle)
        if frame is None:
            continue
        box, u, v = frame
        colour = _colour(rng)
        if kind == "outline":  # of a target shape: shape without its fill
            shape = int(rng.integers(len(SHAPES)))
            width = rng.uniform(0.06, 0.15)
            outer = shape_mask(shape, u, v)
            inner = shape_mask(shape, u / (1 - width), v / (1 - width))
            cv.paint(box, outer & ~inner, colour)
        elif kind == "stroke":
            thickness = rng.uniform(0.04, 0.12)
            cv.paint(box, (np.abs(v) < thickness) & (np.abs(u) < 1), colour)
        elif kind == "blob":
            alpha = np.exp(-3.0 * (u * u + v * v))[..., None] * rng.uniform(0.4, 0.9)
            cv.img[box] = cv.img[box] * (1 - alpha) + colour * alpha
        else:  # "patch": a texture without a target's outline: an irregular smooth-edged patch
            texture = int(rng.integers(1, len(TEXTURES)))
            period = rng.uniform(0.25, 0.6)
            wobble = 0.75 + 0.2 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 6.3))
            inside = u * u + v * v <= wobble * wobble
            patch = inside & texture_mask(texture, u / period, v / period)
            cv.paint(box, patch, colour)


class Target(NamedTuple):
    """Where the target lies: its frame on the canvas (`Canvas.local`), its radius in pixels, and
    two colours that stand out from the ground and from each other by brightness."""

    box: tuple[slice, slice]
    u: np.ndarray
    v: np.ndarray
    radius: float
    a: np.ndarray
    b: np.ndarray


def scene(
    size: int,
    rng: np.random.Generator,
    paint_target: Callable[[Canvas, Target, np.random.Generator], None],
) -> np.ndarray:
    """An image around one target as uint8 [3, size, size]: a cluttered ground, the target
    (painted by `paint_target`) at a random place, scale and tilt, occluded in part by more
    clutter, then uneven lighting, a colour cast and sensor noise. The built-in set's classes
    (`render`) and any variant of them share every nuisance of the scene."""
    cv = Canvas(size, rng)
    ground = _background(cv)
    diameter = size * math.exp(rng.uniform(*np.log(TARGET_DIAMETER)))
    radius = diameter / 2
    # Clutter behind and in front of the target, so occlusion is partial and varied.
    n_clutter = int(rng.integers(CLUTTER_COUNT[0], CLUTTER_COUNT[1] + 1))
    behind = int(rng.integers(0, n_clutter + 1))
    _clutter(cv, behind)
    margin = radius * 0.6
    cx, cy = rng.uniform(margin, size - margin, 2)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    frame = cv.local(cx, cy, radius, angle)
    assert frame is not None
    box, u, v = frame
    a = _colour(rng, away_from=ground)
    b = _colour(rng, away_from=a)
    paint_target(cv, Target(box, u, v, radius, a, b), rng)
    _clutter(cv, min(n_clutter - behind, 2))
    img = cv.finish()
    # Illumination: a smooth gain gradient and a colour cast, then sensor noise.
    t = np.linspace(-1, 1, size, dtype=np.float32)
    g = rng.uniform(-0.3, 0.3, 2)
    gain = 1.0 + g[0] * t[None, :] + g[1] * t[:, None]
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img = img * gain[..., None] * cast + rng.normal(0, 0.02, img.shape).astype(np.float32)
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image of class `label` as uint8 [3, size, size]: a shape filled with a texture whose
    period scales with the shape."""
    shape, texture = label % len(SHAPES), label % len(TEXTURES)

    def paint(cv: Canvas, t: Target, rng: np.random.Generator) -> None:
        periods = rng.uniform(*TEXTURE_PERIODS)
        inside = shape_mask(shape, t.u, t.v)
        pattern = texture_mask(texture, t.u * periods / 2, t.v * periods / 2)
        cv.paint(t.box, inside & ~pattern, t.a)
        cv.paint(t.box, inside & pattern, t.b)

    return scene(size, rng, paint)


def _encode(img: np.ndarray) -> bytes:
    return encode_jpeg(torch.from_numpy(img), quality=JPEG_QUALITY).numpy().tobytes()


def generate_dataset(
    out: str,
    *,
    classes: int = 10,
    per_class: int = 500,
    val_per_class: int = 100,
    size: int = 64,
    seed: int = 0,
    progress: bool = False,
    shard_rows: int = 2048,
) -> Manifest:
    """Write the built-in data set to `out` (a path or URI) and return its manifest.

    Labels cycle 0, 1, ..., classes-1 in stored order, so any prefix of a split (an evaluation
    `limit`) is class-balanced.
    """
    if not 2 <= classes <= MAX_CLASSES:
        raise DataError(
            f"classes={classes}: the generated data set has 2..{MAX_CLASSES} classes"
            f" ({len(SHAPES)} shapes x {len(TEXTURES)} textures); import a real data set for more"
        )
    if per_class < 1 or val_per_class < 1:
        raise DataError(
            f"per_class={per_class}, val_per_class={val_per_class}: expected integers >= 1"
        )
    if size < 16:
        raise DataError(f"size={size}: expected an integer >= 16")
    source = {
        "generator": GENERATOR_VERSION,
        "classes": classes,
        "per_class": per_class,
        "val_per_class": val_per_class,
        "size": size,
        "seed": seed,
    }
    total = classes * (per_class + val_per_class)
    bar = tqdm(total=total, desc="generating", unit="img", disable=not progress)
    with DatasetWriter(
        out, class_names(classes), shard_rows=shard_rows, image_size=size, source=source
    ) as writer:
        for split, n in (("train", per_class), ("val", val_per_class)):
            for i in range(classes * n):
                label = i % classes
                rng = np.random.default_rng([seed, _SPLITS[split], i])
                writer.write(split, _encode(render(label, size, rng)), label, f"{split}/{i:07d}")
                bar.update()
    bar.close()
    return writer.manifest


def cache_key(cfg: DataConfig) -> str:
    """A directory name that changes with every parameter that changes the pictures."""
    text = (
        f"v{GENERATOR_VERSION}-c{cfg.classes}-n{cfg.per_class}-v{cfg.val_per_class}"
        f"-s{cfg.image_size}-seed{cfg.seed}"
    )
    return f"generated-{text}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def ensure_generated(cfg: DataConfig, *, progress: bool = False) -> str:
    """The built-in data set for `cfg`, generated into the cache on first use; its path.

    The set is written to a temporary directory beside its final place and renamed into it,
    so a crash never leaves a half-written set that a later run would trust, and two runs
    racing to create it both end with one complete copy.
    """
    root = os.path.abspath(os.path.expanduser(cfg.cache_dir))
    final = os.path.join(root, cache_key(cfg))
    if os.path.isfile(os.path.join(final, "manifest.json")):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    try:
        generate_dataset(
            tmp,
            classes=cfg.classes,
            per_class=cfg.per_class,
            val_per_class=cfg.val_per_class,
            size=cfg.image_size,
            seed=cfg.seed,
            progress=progress,
        )
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "manifest.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    open_manifest(final)
    return final


def shards_path(cfg: DataConfig, *, progress: bool = False) -> str:
    """`cfg.path` when set, else the built-in set (generated on first use)."""
    return cfg.path or ensure_generated(cfg, progress=progress)


def resolve_data(cfg: JobConfig) -> tuple[str, int, int]:
    """(shard path, number of classes, training examples), generating the built-in set if needed."""
    path = shards_path(cfg.data, progress=cfg.run.progress)
    manifest = open_manifest(path)
    # Files, sizes and row counts against the manifest (footers only), here rather than in
    # the actors, where a bad set would only show as actors dying.
    verify(manifest, splits=["train", "val"], labels=False)
    train, val = int(manifest.counts["train"]), int(manifest.counts["val"])
    if train < cfg.ps.num_replicas:
        raise DataError(
            f"data path {redact(path)!r}: {train} training images, too few for "
            f"ps.num_replicas={cfg.ps.num_replicas}"
        )
    if val < 1:
        raise DataError(
            f"data path {redact(path)!r}: the val split is empty; expected images to score"
        )
    return path, manifest.num_classes, train
