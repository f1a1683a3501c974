"""Your own dataset: `images/` and `masks/` folders paired by file stem.

Masks may be single-channel index PNGs (mode L, or grey RGB), palette PNGs (read as indices
unless mask_format=rgb), or RGB images colour-coded with the palette in the config (every
colour must be in the palette, or listed in `void_colours`, which become 255). `label_map`
renames stored values (e.g. {255: 1} for 0/255 binary masks). Masks must be lossless.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segframe.core.errors import ConfigError
from segframe.data.sample import (
    IGNORE_INDEX,
    IMAGE_FILE_EXTS,
    RawSample,
    SampleError,
    decode_mask,
    is_8bit_index_png,
    mask_indices,
)
from segframe.data.sources.files import Item, fingerprint, load_pair, pairs_by_stem, read_file, read_ids, require
from segframe.data.sources.splits import seeded_split, split_by_lists

MASK_EXTS = ("png", "bmp", "tif", "tiff")
MASK_FORMATS = ("auto", "index", "rgb")
LAYOUT = """\
  <data.root>
    images/NAME.jpg|png|...      (any of {images})
    masks/NAME.png               (same stem; index, palette or RGB-coded PNG)
    [train.txt val.txt]          (optional: one stem per line, with data.split_lists)"""


class FolderSource:
    """Pairs `root/images/STEM.*` with `root/masks/STEM.*`. Split by `split_lists` (split name ->
    list file of stems, relative to root or absolute) or else by a seeded `val_fraction`."""

    def __init__(self, root: str, images: str = "images", masks: str = "masks", mask_format: str = "auto",
                 palette: Sequence[Sequence[int]] | None = None, void_colours: Sequence[Sequence[int]] = (),
                 val_fraction: float = 0.1, seed: int = 0, split_lists: Mapping[str, str] | None = None,
                 label_map: Mapping[int, int] | None = None):
        if mask_format not in MASK_FORMATS:
            raise ConfigError(f"folder: data.mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")
        self.root, self.image_dir, self.mask_dir = Path(root), images, masks
        self.mask_format, self.seed, self.val_fraction = mask_format, int(seed), float(val_fraction)
        self.palette = [list(map(int, c)) for c in palette] if palette else None
        self.void_colours = [list(map(int, c)) for c in void_colours]
        self.split_lists = dict(split_lists or {})
        # stored value -> class id, e.g. {255: 1} for binary masks saved as 0/255
        self.label_map = {int(k): int(v) for k, v in (label_map or {}).items()}
        self._lut = np.arange(256, dtype=np.uint8)
        for stored, class_id in self.label_map.items():
            self._lut[stored] = class_id
        self._items: dict[str, list[Item]] | None = None
        self.unpaired_masks: list[str] = []

    def lists(self) -> dict[str, Path]:
        return {s: (self.root / p) for s, p in self.split_lists.items()}  # an absolute p stays absolute

    def splits(self) -> dict[str, list[Item]]:
        if self._items is not None:
            return self._items
        require("folder", self.root, [self.image_dir, self.mask_dir, *map(str, self.split_lists.values())],
                None, LAYOUT.format(images=", ".join(IMAGE_FILE_EXTS)), command_args='"data.classes=[...]"')
        items, orphans = pairs_by_stem(self.root / self.image_dir, self.root / self.mask_dir, IMAGE_FILE_EXTS, MASK_EXTS)
        self.unpaired_masks = [str(p) for p in orphans]
        if not items:
            raise SampleError(f"folder: no images ({', '.join(IMAGE_FILE_EXTS)}) in {self.root / self.image_dir}")
        if self.split_lists:
            self._items = split_by_lists(items, {s: read_ids(p) for s, p in self.lists().items()}, "folder")
        else:
            num_val = max(1, round(self.val_fraction * len(items)))
            self._items = seeded_split(items, num_val, self.seed, "folder (data.val_fraction)")
        return self._items

    def load(self, item: Item) -> RawSample:
        sample_id, image, mask = item
        if mask is None:
            lossy = [p.name for p in (self.root / self.mask_dir).glob(f"{sample_id}.*")
                     if p.suffix.lower() in (".jpg", ".jpeg")]
            if lossy:
                raise SampleError(f"image {image}: its mask {lossy[0]} is a JPEG; masks must be lossless "
                                  f"({', '.join(MASK_EXTS)}): JPEG compression changes label values at edges")
        return load_pair(item, self.read_mask)

    def read_mask(self, path: str | Path) -> np.ndarray | bytes:
        data = read_file(path, "mask")
        try:
            with Image.open(io.BytesIO(data)) as im:
                mask = self._decode(im, data, path)
        except SampleError:
            raise
        except Exception as exc:
            raise SampleError(f"mask {path} cannot be decoded ({exc})") from exc
        if self.label_map:
            mask = self._lut[decode_mask(mask, f"mask {path}") if isinstance(mask, bytes) else mask]
        return mask

    def _decode(self, im: Image.Image, data: bytes, path: str | Path) -> np.ndarray | bytes:
        mode = im.mode
        if mode in ("1", "L", "P") and self.mask_format != "rgb":
            # palette PNGs by index (VOC's convention); an 8-bit index PNG is stored as it is
            if is_8bit_index_png(im):
                return data
            return mask_indices(im, f"mask {path}")
        if mode in ("RGB", "RGBA", "P") and self.mask_format != "index" and self.palette:
            return self._colours_to_index(np.asarray(im.convert("RGB")), path)
        if mode in ("RGB", "RGBA"):
            rgb = np.asarray(im.convert("RGB"))
            if self.mask_format != "rgb" and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                return rgb[..., 0].copy()  # class ids saved as grey in an RGB file
            if self.mask_format != "index":
                raise SampleError(f"mask {path} is colour-coded (RGB) but data.palette is not set: give one colour "
                                  "per class, e.g. data.palette=[[0,0,0],[255,0,0]]")
        want = {"auto": "1, L, P, RGB or RGBA", "index": "1, L or P (or grey RGB)",
                "rgb": "RGB, RGBA or P, with data.palette"}
        raise SampleError(f"mask {path} has mode {mode!r}; data.mask_format={self.mask_format} expects "
                          f"{want[self.mask_format]}")

    def _colours_to_index(self, rgb: np.ndarray, path: str | Path) -> np.ndarray:
        assert self.palette
        code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        lut = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.palette)}
        lut.update({(r << 16) | (g << 8) | b: IGNORE_INDEX for r, g, b in self.void_colours})
        colours, inverse = np.unique(code, return_inverse=True)
        unknown = [c for c in colours.tolist() if c not in lut]
        if unknown:
            shown = [[c >> 16, (c >> 8) & 255, c & 255] for c in unknown[:5]]
            raise SampleError(f"mask {path}: colours {shown} are not in data.palette (nor data.void_colours)")
        return np.array([lut[c] for c in colours.tolist()], dtype=np.uint8)[inverse].reshape(code.shape)

    def mask_palette(self, num_classes: int) -> list[list[int]] | None:
        """The colours of the first mask when it is a palette PNG (as annotation tools save them):
        the dataset's own colours, for a config that gives no data.palette."""
        for items in self.splits().values():
            for _, _, mask in items:
                if mask is None:
                    continue
                with Image.open(mask) as im:
                    colours = im.getpalette() if im.mode == "P" else None
                if not colours or len(colours) < 3 * num_classes:
                    return None
                return [colours[3 * i:3 * i + 3] for i in range(num_classes)]
        return None

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "images": self.image_dir, "masks": self.mask_dir,
                "mask_format": self.mask_format, "palette": self.palette, "void_colours": self.void_colours,
                "val_fraction": self.val_fraction, "seed": self.seed, "split_lists": self.split_lists,
                "label_map": self.label_map}

    def fingerprint(self) -> dict[str, Any]:
        return {**fingerprint(self.root, self.splits(), self.lists().values()), "unpaired_masks": self.unpaired_masks}
