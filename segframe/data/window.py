"""Scale-pad-crop computed on the crop window only.

albumentations' RandomScale -> PadIfNeeded (centred) -> RandomCrop (or CenterCrop with
pad_if_needed) resizes the whole image, up to 4x its pixels at scale 2, and then keeps a crop of
it. WindowedScaleCrop samples the same scale and crop corner, with the same draws and the same
integer arithmetic, and computes only what the crop shows: a cv2.resize of the part of the source
that reaches the crop (the same call as the chain's, so the same pixels), and a gather for the mask
by cv2.resize's nearest rule (so the same labels). Padding is 0 in the image and IGNORE_INDEX in
the mask, as in the chain.

Given the encoded image (shard streams hand it over, see ShardStream), a JPEG whose sampled
scale is at most 1/2 is decoded at libjpeg's reduced DCT scale (1/2, 1/4, 1/8) and the reduction
is folded into the resize; masks are always read at full resolution.

Against the chain (tests/test_augment_window.py): the same draw gives identical images and masks
when the image is decoded at full size; a reduced JPEG decode differs from it by a few levels on
average (libjpeg averages each k x k block where the resize interpolates).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from segframe.data.sample import IGNORE_INDEX, EncodedImage

REDUCED_DECODE_SCALE = 0.5  # at or below this sampled scale a JPEG is decoded at a reduced DCT scale


@dataclass(frozen=True)
class Window:
    """One draw: where the crop lies in the scaled (and padded) image."""

    scale: float  # the sampled scale s
    source: tuple[int, int]  # (H, W) of the full-resolution image
    scaled: tuple[int, int]  # (int(H*s), int(W*s)): the size RandomScale resizes to
    top: int  # the crop's corner in scaled-image pixels; negative means inside the top/left padding
    left: int
    size: tuple[int, int]  # the crop's (height, width)


def sample_window(rng: random.Random, source: tuple[int, int], crop: tuple[int, int], scale: Sequence[float],
                  random_crop: bool = True) -> Window:
    """The scale and crop corner albumentations' chain would draw: RandomScale's uniform (its
    scale_limit is biased by 1), then RandomCrop's row and column fractions (none for a centre crop)."""
    lo, hi = float(scale[0]), float(scale[1])
    s = rng.uniform(lo - 1.0, hi - 1.0) + 1.0
    scaled = (int(source[0] * s), int(source[1] * s))  # albumentations' scale(): int(), not round()
    top = _corner(scaled[0], crop[0], rng if random_crop else None)
    left = _corner(scaled[1], crop[1], rng if random_crop else None)
    return Window(s, (int(source[0]), int(source[1])), scaled, top, left, (int(crop[0]), int(crop[1])))


def _corner(n: int, crop: int, rng: random.Random | None) -> int:
    """The crop's start along one axis of an n-pixel scaled image, in scaled-image pixels: the
    image is padded centred to at least `crop` (PadIfNeeded puts int(pad / 2) before it), then
    the crop starts at int((padded - crop + 1) * u) (RandomCrop) or (padded - crop) // 2 (CenterCrop)."""
    before = int((crop - n) / 2.0) if n < crop else 0
    padded = max(n, crop)
    start = int((padded - crop + 1) * rng.random()) if rng is not None else (padded - crop) // 2
    return start - before


def reduced_decode_size(window: Window) -> tuple[int, int] | None:
    """(h, w) a JPEG may be decoded down to for this window (the scaled size, rounded up), or None
    for a full decode: above 1/2 even libjpeg's mildest reduction would lose detail the crop keeps."""
    if window.scale > REDUCED_DECODE_SCALE:
        return None
    return math.ceil(window.source[0] * window.scale), math.ceil(window.source[1] * window.scale)


def crop_image(image: np.ndarray, window: Window, k: int = 1, fill: int = 0) -> np.ndarray:
    """The window of the scaled image, from `image`, the source decoded at 1/k.

    cv2.resize places output pixel y at input coordinate (y + 0.5) / f - 0.5 measured from the
    input's origin, so resizing only the input's top-left part that reaches the window's far edge
    (plus two pixels for the interpolation) gives exactly the chain's pixels there; a 1/k decode's
    pixel j is centred on source k*(j + 0.5) - 0.5, so f = k * h / H keeps the same geometry.
    (cv2.warpAffine of the window alone computes fewer pixels but is ~4x slower per pixel, and
    interpolates at 1/32 pixel instead of cv2.resize's 1/2048.)"""
    (h, w), (big_h, big_w), (ch, cw) = window.scaled, window.source, window.size
    fy, fx = k * h / big_h, k * w / big_w  # scaled pixels per decoded pixel
    out = np.full((ch, cw, *image.shape[2:]), fill, image.dtype)
    (y0, y1), (x0, x1) = _shown(window.top, ch, h), _shown(window.left, cw, w)
    if y1 > y0 and x1 > x0:
        rows = min(image.shape[0], math.ceil(y1 / fy) + 2)
        cols = min(image.shape[1], math.ceil(x1 / fx) + 2)
        part = cv2.resize(image[:rows, :cols], None, fx=fx, fy=fy, interpolation=cv2.INTER_LINEAR)
        out[y0 - window.top: y1 - window.top, x0 - window.left: x1 - window.left] = part[y0:y1, x0:x1]
    return out


def _shown(start: int, count: int, n: int) -> tuple[int, int]:
    """The scaled pixels [first, end) of an n-pixel axis that a crop of `count` from `start` shows
    (the rest of the crop is padding)."""
    return max(0, start), min(n, start + count)


def crop_mask(mask: np.ndarray, window: Window, fill: int = IGNORE_INDEX) -> np.ndarray:
    """The window of the nearest-neighbour scaled mask, gathered from the full-resolution mask
    (rows first, then columns: two contiguous takes are ~6x faster than one fancy index)."""
    rows = _nearest(window.top, window.size[0], window.scaled[0], window.source[0])
    cols = _nearest(window.left, window.size[1], window.scaled[1], window.source[1])
    return _pad(mask.take(rows, axis=0).take(cols, axis=1), window, fill)


def _nearest(start: int, count: int, scaled: int, full: int) -> np.ndarray:
    """Source indices of scaled pixels start..start+count-1 by cv2.resize's INTER_NEAREST rule,
    floor(x * (1 / (scaled / full))) clamped to the image, in the same double arithmetic."""
    x = np.arange(start, start + count, dtype=np.float64)
    return np.clip(np.floor(x * (1.0 / (scaled / full))), 0, full - 1).astype(np.intp)


def _pad(out: np.ndarray, window: Window, fill: int) -> np.ndarray:
    """Paint the crop's rows and columns that fall outside the scaled image (the chain's padding)."""
    (h, w), (ch, cw) = window.scaled, window.size
    out[: max(0, min(ch, -window.top))] = fill
    out[max(0, h - window.top):] = fill
    out[:, : max(0, min(cw, -window.left))] = fill
    out[:, max(0, w - window.left):] = fill
    return out


class WindowedScaleCrop:
    """Random scale, centred pad, random (or centre) crop, computed on the crop window only, a
    horizontal flip with probability `hflip`, then `post` (colour jitter) on the crop. Called like an
    albumentations Compose (`t(image=, mask=)` -> dict) on decoded arrays; `apply_encoded` takes the
    image still encoded. The returned dict also holds the draw under "window" and "flipped".

    The flip is drawn from the window's random stream and done by cv2.flip, which is what
    albumentations' HorizontalFlip calls: the same pixels (tests/test_augment_window.py)."""

    def __init__(self, crop_size: tuple[int, int], scale: Sequence[float], random_crop: bool = True,
                 post: A.Compose | None = None, seed: int | None = None, hflip: float = 0.0):
        if not 0 < float(scale[0]) <= float(scale[1]):
            raise ValueError(f"augmentation scale: expected 0 < low <= high, got {list(scale)}")
        if not 0.0 <= float(hflip) <= 1.0:
            raise ValueError(f"augmentation hflip: expected a probability in [0, 1], got {hflip}")
        self.crop, self.scale, self.random_crop = (int(crop_size[0]), int(crop_size[1])), tuple(scale), random_crop
        self.hflip = float(hflip)
        self.post = post if post is not None and post.transforms else None
        self.rng = random.Random(seed)

    def set_random_seed(self, seed: int) -> None:
        """Own streams for the window and for `post` (ShardStream gives each worker a seed)."""
        self.rng.seed(seed)
        if self.post is not None:
            self.post.set_random_seed((seed + 1) % 2**31)

    def sample(self, source: tuple[int, int]) -> Window:
        return sample_window(self.rng, source, self.crop, self.scale, self.random_crop)

    def __call__(self, *, image: np.ndarray, mask: np.ndarray, **_: Any) -> dict:
        window = self.sample(mask.shape[:2])
        return self._finish(crop_image(image, window), mask, window)

    def apply_encoded(self, encoded: EncodedImage, mask: np.ndarray) -> dict:
        """Decode and crop together: a JPEG drawn at scale <= 1/2 decodes at a reduced DCT scale."""
        window = self.sample(mask.shape[:2])
        image, k = encoded.decode(reduced_decode_size(window))
        return self._finish(crop_image(image, window, k), mask, window)

    def _finish(self, image: np.ndarray, mask: np.ndarray, window: Window) -> dict:
        mask = crop_mask(mask, window)
        # drawn after the window, and only when it can go either way, so hflip=0 and hflip=1 leave
        # the window stream as it is
        flipped = self.hflip >= 1.0 or (self.hflip > 0.0 and self.rng.random() < self.hflip)
        if flipped:
            image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
        out = self.post(image=image, mask=mask) if self.post is not None else {"image": image, "mask": mask}
        out.update(window=window, flipped=flipped)
        return out
