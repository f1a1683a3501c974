"""What every converter over (image file, mask file) pairs shares: reading list files and
masks, the "dataset not found" message, the source fingerprint, and a default palette.

An item is a small picklable tuple `(id, image_path, mask_path)`; `mask_path` is None when
the image has no mask, which `load` reports as a bad sample (so `on_bad=skip` can skip it).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from segframe.core.errors import DatasetNotFoundError
from segframe.data.sample import RawSample, SampleError, is_8bit_index_png, mask_indices

Item = tuple[str, str, "str | None"]
log = logging.getLogger("segframe")


def require(name: str, root: Path, relative: Iterable[str], url: str | None, layout: str,
            root_key: str = "data.root", command_args: str = "") -> None:
    """Unless every relative path exists under root, raise the one message a user gets for a
    missing or incomplete raw dataset: what is missing, where to download it (`url`; None for
    the user's own data), the layout expected, and the command to run once it is there."""
    missing = [rel for rel in relative if not (root / rel).exists()]
    if not missing:
        return
    where = (f"Download it from {url} (segframe never downloads datasets) and extract it" if url
             else "Put your files there")
    raise DatasetNotFoundError(
        f"{name}: raw dataset not found or incomplete at {root}: missing {', '.join(missing)}.\n"
        f"{where} so that it looks like:\n"
        f"{layout.rstrip().replace('<data.root>', f'<{root_key}>')}\n"
        f"Then run: python -m segframe.convert data={name} {root_key}=/path/to/it {command_args}".rstrip()
    )


def read_ids(path: Path) -> list[str]:
    """A list file: one image id (file stem) per line; blank lines and surrounding spaces ignored."""
    ids = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SampleError(f"{path}: id {dup!r} is listed more than once")
    return ids


def read_file(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SampleError(f"{what} file {path} is missing") from None


def _open_mask(path: str | Path, keep_bytes: bool) -> np.ndarray | bytes:
    data = read_file(path, "mask")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("1", "L", "P"):
                raise SampleError(
                    f"mask {path} is a {im.format} of mode {im.mode!r}; expected a single-channel index or palette "
                    "image (an RGB-coloured mask needs data=folder with a palette)"
                )
            if keep_bytes and is_8bit_index_png(im):
                return data  # 8-bit: already the shard's mask format
            return mask_indices(im, f"mask {path}")
    except SampleError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SampleError(f"mask {path} cannot be decoded ({exc})") from exc


def read_index_png(path: str | Path) -> np.ndarray:
    """An index mask (mode L, or P read as palette indices, never through RGB) -> HxW uint8."""
    return _open_mask(path, keep_bytes=False)  # type: ignore[return-value]


def index_png_bytes(path: str | Path) -> np.ndarray | bytes:
    """An 8-bit index or palette PNG's own bytes (the shard writer decodes it once to validate and
    count, and stores the bytes as they are); other index images (1/2/4-bit) decoded to ids."""
    return _open_mask(path, keep_bytes=True)


def load_pair(item: Item, read_mask: Any = read_index_png) -> RawSample:
    """Image bytes kept as they are on disk (the shard writer never re-encodes JPEG/PNG)."""
    sample_id, image_path, mask_path = item
    if mask_path is None:
        raise SampleError(f"image {image_path} has no mask file")
    image = read_file(image_path, "image")
    return RawSample(id=sample_id, image=image, mask=read_mask(mask_path), source=f"{image_path} + {mask_path}")


def fingerprint(root: str | Path, items: dict[str, list[Item]], list_files: Iterable[Path] = ()) -> dict[str, Any]:
    """What identifies the raw input: each list file's size and sha256, and the number, total size
    and a hash of the (relative name, size) listing of every image and mask file converted."""
    root = Path(root)
    lists = {}
    for path in list_files:
        data = path.read_bytes()
        lists[_rel(path, root)] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    h = hashlib.sha256()
    count = total = 0
    for split in sorted(items):
        for _, image, mask in items[split]:
            for p in (image, mask):
                if p is None:
                    continue
                try:
                    size = Path(p).stat().st_size
                except OSError:
                    size = -1  # reported when the sample is loaded
                h.update(f"{split}\t{_rel(Path(p), root)}\t{size}\n".encode())
                count += 1
                total += max(size, 0)
    return {"root": str(root), "lists": lists, "files": count, "bytes": total, "listing_sha256": h.hexdigest()}


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def bit_palette(num_colours: int) -> list[list[int]]:
    """The PASCAL VOC colour map (bits of the class index spread over R, G, B), for any count."""
    palette = []
    for index in range(num_colours):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append([r, g, b])
    return palette


def pairs_by_stem(image_dir: Path, mask_dir: Path, image_exts: Sequence[str], mask_exts: Sequence[str],
                  image_suffix: str = "", mask_suffix: str = "") -> tuple[list[Item], list[Path]]:
    """Images paired with the mask of the same stem (after removing the suffixes).
    Returns (items sorted by id, masks with no image)."""
    def stems(folder: Path, exts: Sequence[str], suffix: str) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):  # .DS_Store, macOS `._name` resource forks, editors' temp files
                continue
            if p.is_file() and p.suffix.lower().lstrip(".") in exts and p.stem.endswith(suffix):
                stem = p.stem[: len(p.stem) - len(suffix)] if suffix else p.stem
                if stem in found:
                    raise SampleError(f"{found[stem]} and {p} have the same name stem {stem!r}; keep one")
                found[stem] = p
        return found

    images, masks = stems(image_dir, image_exts, image_suffix), stems(mask_dir, mask_exts, mask_suffix)
    items = [(stem, str(path), str(masks[stem]) if stem in masks else None) for stem, path in images.items()]
    orphans = [path for stem, path in masks.items() if stem not in images]
    if orphans:  # not an error (nothing to train on), but a user should know; the fingerprint lists them
        log.warning("%d mask(s) in %s have no image in %s, e.g. %s", len(orphans), mask_dir, image_dir, orphans[0].name)
    return items, orphans
