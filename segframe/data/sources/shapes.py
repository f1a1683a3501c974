"""`shapes`: the embedded, procedurally generated dataset (no download, deterministic).

Each image has several overlapping shapes on a textured background. A shape's colour is
drawn at random, independently of its class, so a model must learn shape, not colour.
Later shapes occlude earlier ones in both the image and the mask.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segframe.core.errors import ConfigError
from segframe.data.sample import RawSample
from segframe.data.sources.splits import seeded_folds

CLASSES = ("background", "circle", "square", "triangle", "star", "cross")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48))
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "circle":
        pts = [(1.0, 2 * math.pi * i / 48) for i in range(48)]
    elif kind == "square":
        pts = [(1.0, math.pi / 4 + math.pi / 2 * i) for i in range(4)]
    elif kind == "triangle":
        pts = [(1.0, 2 * math.pi * i / 3) for i in range(3)]
    elif kind == "star":
        pts = [(1.0 if i % 2 == 0 else 0.42, math.pi * i / 5) for i in range(10)]
    elif kind == "cross":  # plus sign with arms a third of its width
        a, b = 1.0, 1.0 / 3
        corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a), (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        pts = [(math.hypot(x, y) / math.hypot(a, b) * 1.05, math.atan2(y, x)) for x, y in corners]
    else:
        raise ValueError(kind)
    return [(cx + r * rho * math.cos(t + angle), cy + r * rho * math.sin(t + angle)) for rho, t in pts]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colour gradient, optional stripes or checks, and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    t = (xx * math.cos(rng.uniform(0, math.pi)) + yy * math.sin(rng.uniform(0, math.pi))) / max(h, w)
    img = c0 + (c1 - c0) * ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    pattern = rng.integers(3)
    if pattern == 1:
        period = rng.uniform(6, 20)
        img += 25 * np.sin(2 * math.pi * (xx + yy * rng.uniform(-1, 1)) / period)[..., None]
    elif pattern == 2:
        cell = int(rng.integers(6, 16))
        img += 20 * (((xx // cell) + (yy // cell)) % 2 * 2 - 1)[..., None]
    img += rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


class ShapesSource:
    """Generates `num_train` / `num_val` images of `size`x`size` pixels from `seed`; with `num_folds`,
    the same images dealt into seeded folds fold0..fold{n-1} instead of train / val."""

    def __init__(
        self, num_train: int = 600, num_val: int = 100, size: int = 96,
        min_shapes: int = 2, max_shapes: int = 5, seed: int = 0, num_folds: int | None = None,
    ):
        if num_train < 1 or num_val < 1:
            raise ConfigError("shapes: num_train and num_val must be >= 1")
        self.num_train, self.num_val, self.size = num_train, num_val, size
        self.min_shapes, self.max_shapes, self.seed = min_shapes, max_shapes, seed
        self.num_folds = int(num_folds) if num_folds else None

    def splits(self) -> dict[str, list[Any]]:
        items = {
            "train": [("train", i) for i in range(self.num_train)],
            "val": [("val", i) for i in range(self.num_val)],
        }
        if self.num_folds:
            return seeded_folds(items["train"] + items["val"], self.num_folds, self.seed, "shapes")
        return items

    def load(self, item: tuple[str, int]) -> RawSample:
        split, index = item
        image, mask = self.generate(split, index)
        return RawSample(id=f"{split}/{index:06d}", image=image, mask=mask, source=f"shapes:{split}:{index}")

    def generate(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Same (seed, split, index) -> same image and mask, on any machine."""
        rng = np.random.default_rng([self.seed, _SPLIT_IDS[split], index])
        s = self.size
        image = Image.fromarray(_background(rng, s, s))
        mask = Image.new("L", (s, s), 0)
        draw_img, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        for _ in range(int(rng.integers(self.min_shapes, self.max_shapes + 1))):
            cls = int(rng.integers(1, len(CLASSES)))
            r = rng.uniform(0.12, 0.28) * s
            cx, cy = rng.uniform(0.1 * s, 0.9 * s, 2)
            poly = _polygon(CLASSES[cls], cx, cy, r, rng.uniform(0, 2 * math.pi))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw_img.polygon(poly, fill=colour)
            draw_mask.polygon(poly, fill=cls)
        noisy = np.asarray(image).astype(np.int16) + rng.normal(0, 4, (s, s, 3)).astype(np.int16)
        return np.clip(noisy, 0, 255).astype(np.uint8), np.asarray(mask, dtype=np.uint8).copy()

    def options(self) -> dict[str, Any]:
        return {
            "num_train": self.num_train, "num_val": self.num_val, "size": self.size,
            "min_shapes": self.min_shapes, "max_shapes": self.max_shapes, "seed": self.seed,
            "num_folds": self.num_folds,
        }

    def fingerprint(self) -> dict[str, Any]:
        return {"generator": "shapes-v1", **self.options()}
