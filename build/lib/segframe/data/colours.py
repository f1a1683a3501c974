"""Class-id masks as pictures, one convention everywhere (report grids, `convert browse=true`,
`predict`): each class in its palette colour, void (255) in white."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segframe.data.sample import IGNORE_INDEX

IGNORE_COLOUR = (255, 255, 255)


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """HxW class ids -> HxWx3 uint8 colours."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    lut[IGNORE_INDEX] = IGNORE_COLOUR
    return lut[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """The mask's class colours blended over the image; void pixels (255) hatched white."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(mask, palette).astype(np.float32)
    yy, xx = np.indices(mask.shape)
    hatch = (mask == IGNORE_INDEX) & ((yy + xx) % 6 < 2)
    mixed[hatch] = 255
    return mixed.astype(np.uint8)


def save_index_png(mask: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> None:
    """Class indices as a palette PNG: viewers show the dataset colours, readers get the ids."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    image.putpalette(flat + [255, 255, 255] * (256 - len(palette)))
    image.save(path)
