"""Synthetic raw datasets in real on-disk layouts, for the bench and the tests: a VOC 2012 tree
of VOC-size JPEGs and palette PNG labels, with SBD `.mat` labels for the same images.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def write_sbd_mat(path: str | Path, seg: np.ndarray) -> None:
    """The inverse of `read_sbd_mat`, in the release's layout: struct GTcls {Boundaries: 20x1 cell
    of sparse matrices, Segmentation, CategoriesPresent}. The tests' SBD fixtures and the bench's
    VOC-aug tree use it."""
    import scipy.io
    import scipy.sparse

    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(seg.shape, dtype=bool)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"GTcls": {"Boundaries": boundaries, "Segmentation": seg.astype(np.uint8),
                                           "CategoriesPresent": present}}, do_compression=True)


def _voc_pair(args: tuple[Path, str, int, tuple[int, int]]) -> int:
    """One VOC-like image (a JPEG of smooth regions, edges and sensor noise: at VOC's 500x375, ~VOC's
    file size) and its palette PNG label with a void outline; returns the bytes written."""
    from PIL import Image, ImageDraw, ImageFilter

    from segframe.data.sources.voc import PALETTE

    base, image_id, seed, (h, w) = args
    rng = np.random.default_rng(seed)
    k = w / 500  # objects and texture grow with the image
    small = rng.integers(0, 256, (round(96 * k), round(128 * k), 3), dtype=np.uint8)  # ~100 KiB at 500x375
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    label = Image.new("P", (w, h), 0)
    label.putpalette([c for colour in PALETTE for c in colour] + [224, 224, 192] * (256 - len(PALETTE)))
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, w - round(120 * k))), int(rng.integers(0, h - round(100 * k)))
        box = [x0, y0, x0 + int(rng.integers(60, 200) * k), y0 + int(rng.integers(60, 200) * k)]
        cls = int(rng.integers(1, len(PALETTE)))
        draw_image.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw_label.ellipse(box, fill=cls, outline=255, width=5)  # VOC's 5-px void border
    pixels = np.asarray(image.filter(ImageFilter.DETAIL), dtype=np.int16)
    pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)
    jpg = base / "JPEGImages" / f"{image_id}.jpg"
    png = base / "SegmentationClass" / f"{image_id}.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(jpg, quality=90)
    label.save(png)
    label_ids = np.asarray(label)
    write_sbd_mat(base.parent.parent / "benchmark_RELEASE" / "dataset" / "cls" / f"{image_id}.mat",
                  np.where(label_ids == 255, 0, label_ids))  # SBD has no void border
    return jpg.stat().st_size + png.stat().st_size


def write_voc_tree(root: Path, num_images: int, size: tuple[int, int] = (375, 500)) -> int:
    """`root/VOCdevkit/VOC2012` of generated images, and `root/benchmark_RELEASE/dataset` with SBD
    labels for the same images, in roughly VOC-aug's proportions (VOC lists 24% of the images, SBD
    88%; real: 2913 and 11355 of 12031). `size`: (height, width) of every image, VOC-like 375x500 by
    default. Returns the VOC tree's raw bytes (images + labels)."""
    import multiprocessing as mp

    base, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    for folder in (base / "JPEGImages", base / "SegmentationClass", base / "ImageSets/Segmentation", sbd / "cls"):
        folder.mkdir(parents=True, exist_ok=True)
    ids = [f"2012_{i:06d}" for i in range(num_images)]
    cut = lambda fraction: round(fraction * num_images)  # noqa: E731
    lists = {base / "ImageSets/Segmentation/train.txt": ids[:cut(0.12)],
             base / "ImageSets/Segmentation/val.txt": ids[cut(0.12):cut(0.24)],
             sbd / "train.txt": ids[:cut(0.06)] + ids[cut(0.19):cut(0.80)],
             sbd / "val.txt": ids[cut(0.80):]}
    for path, listed in lists.items():
        path.write_text("".join(f"{i}\n" for i in listed))
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        return sum(pool.map(_voc_pair, [(base, i, n, size) for n, i in enumerate(ids)], chunksize=16))
