"""Albumentations pipelines applied jointly to image and mask (uint8 HxWx3, uint8 HxW).

Normalisation is not done here: the model owns its input normalisation (so checkpoints
carry it), and keeping images uint8 until the GPU moves 4x fewer bytes through the loader.

Padding always fills masks with IGNORE_INDEX so padded pixels never count as a class.
albumentations 2.x names the fills `fill=` / `fill_mask=`; the 1.x names are ignored.

default_train and seed_train scale, pad and crop with WindowedScaleCrop (data/window.py): the same
draws as the albumentations chain, computed on the crop window only. `reference=True` returns the
plain chain instead (the bench's per-file baseline, and the tests' yardstick).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

from segframe.data.sample import IGNORE_INDEX
from segframe.data.window import WindowedScaleCrop


def _size(crop_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(crop_size, int):
        return crop_size, crop_size
    h, w = crop_size
    return int(h), int(w)


def _flip(hflip: float) -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=hflip)] if hflip > 0 else []


def _random_scale(scale: Sequence[float]) -> A.RandomScale:
    # scale_limit is relative to 1: (0.5, 2.0) -> (-0.5, 1.0). p=1: always rescale.
    return A.RandomScale(scale_limit=(scale[0] - 1.0, scale[1] - 1.0), interpolation=cv2.INTER_LINEAR,
                         mask_interpolation=cv2.INTER_NEAREST, p=1.0)


def default_train(
    crop_size: int | Sequence[int] = 512,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.8,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.05,
    reference: bool = False,
) -> A.Compose | WindowedScaleCrop:
    """Random scale, pad (mask 255), random crop, flip, colour distortion. `reference`: the plain
    albumentations chain (resize the whole image, pad, crop) instead of the windowed one."""
    h, w = _size(crop_size)
    jitter = []
    if color_jitter > 0:
        jitter = [A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=color_jitter)]
    if not reference:
        return WindowedScaleCrop((h, w), scale, random_crop=True, hflip=hflip, post=A.Compose(jitter))
    return A.Compose(
        [
            _random_scale(scale),
            A.PadIfNeeded(min_height=h, min_width=w, position="center", border_mode=cv2.BORDER_CONSTANT,
                          fill=0, fill_mask=IGNORE_INDEX),
            A.RandomCrop(height=h, width=w),
            *_flip(hflip),
            *jitter,
        ]
    )


def seed_train(
    crop_size: int | Sequence[int] = 384, scale: Sequence[float] = (0.9, 1.1), hflip: float = 0.5,
    reference: bool = False,
) -> A.Compose | WindowedScaleCrop:
    """tf-image-segmentation's recipe: scale jitter U(0.9, 1.1), then crop-or-pad (centred)
    to a fixed output size with the mask padded by the ignore label, then a random flip.
    `reference`: the plain albumentations chain instead of the windowed one."""
    h, w = _size(crop_size)
    if not reference:
        return WindowedScaleCrop((h, w), scale, random_crop=False, hflip=hflip)
    return A.Compose(
        [
            _random_scale(scale),
            A.CenterCrop(height=h, width=w, pad_if_needed=True, pad_position="center",
                         border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_INDEX),
            *_flip(hflip),
        ]
    )


def flips(hflip: float = 0.5, vflip: float = 0.0, rot90: bool = False) -> A.Compose:
    """Only the symmetries of the image: horizontal / vertical flips and, with `rot90`, quarter turns.
    Every pixel keeps its label and nothing is resampled, so short runs learn from exact images
    (the quickstart); flips and quarter turns are also the usual augmentation of endoscopy images."""
    return A.Compose([*_flip(hflip), *([A.VerticalFlip(p=vflip)] if vflip > 0 else []),
                      *([A.RandomRotate90(p=1.0)] if rot90 else [])])


def identity() -> A.Compose:
    """No augmentation (evaluation at native size; `augmentation=none` for training)."""
    return A.Compose([])
