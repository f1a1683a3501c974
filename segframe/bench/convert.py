"""Converter throughput: samples/s of converting a generated VOC-format tree (VOC-size JPEGs,
palette PNG masks, SBD .mat labels) into shards, per converter process count, and shard bytes /
raw bytes. `write_voc_tree` also feeds the loader parts (shards vs per-file reading).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path


def _voc_pair(args: tuple[Path, str, int]) -> int:
    """One VOC-like image (500x375 JPEG of smooth regions, edges and sensor noise, ~VOC's file
    size) and its palette PNG label with a void outline; returns the bytes written."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    from segframe.data.sources.voc import PALETTE, write_sbd_mat

    base, image_id, seed = args
    rng = np.random.default_rng(seed)
    w, h = 500, 375
    small = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)  # scene texture: ~100 KiB JPEGs like VOC's
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    label = Image.new("P", (w, h), 0)
    label.putpalette([c for colour in PALETTE for c in colour] + [224, 224, 192] * (256 - len(PALETTE)))
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, w - 120)), int(rng.integers(0, h - 100))
        box = [x0, y0, x0 + int(rng.integers(60, 200)), y0 + int(rng.integers(60, 200))]
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


def write_voc_tree(root: Path, num_images: int) -> int:
    """`root/VOCdevkit/VOC2012` of generated images, and `root/benchmark_RELEASE/dataset` with SBD
    labels for the same images, in roughly VOC-aug's proportions (VOC lists 24% of the images, SBD
    88%; real: 2913 and 11355 of 12031). Returns the VOC tree's raw bytes (images + labels)."""
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
        return sum(pool.map(_voc_pair, [(base, i, n) for n, i in enumerate(ids)], chunksize=16))


def bench_convert(num_images: int, workers: list[int], repeats: int) -> tuple[int, list[tuple]]:
    """(raw bytes of the VOC tree, [(dataset, workers, samples, samples/s, shard bytes)]): the `voc`
    converter over every image of a generated tree (all listed, as train/val), then `voc_aug`."""
    from segframe.data.shards import write_dataset
    from segframe.data.sources.voc import CLASSES, PALETTE, VOCAugSource, VOCSource

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp) / "raw"
        raw = write_voc_tree(raw_dir, num_images)
        voc_root, sbd_root = raw_dir / "VOCdevkit" / "VOC2012", raw_dir / "benchmark_RELEASE" / "dataset"
        everything = voc_root / "ImageSets/Segmentation"
        ids = sorted(p.stem for p in (voc_root / "JPEGImages").iterdir())
        (everything / "all.txt").write_text("".join(f"{i}\n" for i in ids))
        sources = {"voc": VOCSource(str(voc_root), splits=["all"]), "voc_aug": VOCAugSource(str(voc_root), str(sbd_root))}
        for _ in range(repeats):  # alternate settings so drift affects all alike
            for name, source in sources.items():
                for w in workers:
                    out = Path(tmp) / f"{name}{w}"
                    start = time.perf_counter()
                    manifest = write_dataset(source, out, name, CLASSES, PALETTE, shard_size=500, num_workers=w)
                    seconds = time.perf_counter() - start
                    count = sum(v["num_samples"] for v in manifest["splits"].values())
                    shard_bytes = sum(s["bytes"] for v in manifest["splits"].values() for s in v["shards"])
                    rows.append((name, w, count, count / seconds, shard_bytes))
    return raw, rows


def report(raw: int, rows: list[tuple], num_images: int) -> str:
    lines = [f"generated VOC tree: {num_images} images 500x375 JPEG + palette PNG, "
             f"{raw / num_images / 1024:.0f} KiB per pair, in the page cache; SBD .mat labels for voc_aug",
             f"{'dataset':<8} {'workers':>7} {'samples':>7} {'samples/s':>10} {'shard/raw bytes':>16}"]
    for name, w, count, rate, shard_bytes in rows:
        lines.append(f"{name:<8} {w:>7} {count:>7} {rate:>10.1f} " + (f"{shard_bytes / raw:>16.3f}" if name == "voc" else ""))
    rates: dict[tuple[str, int], list[float]] = {}
    for name, w, _, rate, _ in rows:
        rates.setdefault((name, w), []).append(rate)
    lo, hi = min(w for _, w in rates), max(w for _, w in rates)
    for name in ("voc", "voc_aug"):
        best = statistics.median(rates[(name, hi)])
        lines.append(f"{name}: {best:.0f} samples/s with {hi} worker(s) (target >= 150), "
                     f"{best / statistics.median(rates[(name, lo)]):.2f}x the {lo}-worker rate")
    lines.append(f"the 12,031 VOC-aug images at the voc_aug rate: "
                 f"{12031 / statistics.median(rates[('voc_aug', hi)]):.0f} s (target < 90 s)")
    return "\n".join(lines)
