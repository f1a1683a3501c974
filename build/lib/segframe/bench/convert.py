"""Converter throughput: samples/s of converting a generated VOC-format tree (VOC-size JPEGs,
palette PNG masks, SBD .mat labels) into shards, per converter process count, and shard bytes /
raw bytes. The tree comes from `bench/synthetic.py`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from segframe.bench.synthetic import write_voc_tree


def bench_convert(num_images: int, workers: list[int], repeats: int) -> tuple[int, list[tuple]]:
    """(raw bytes of the VOC tree, [(dataset, workers, samples, samples/s, shard bytes)]): the `voc`
    converter over every image of a generated tree (all listed, as train/val), then `voc_aug`."""
    from segframe.data.shard_writer import write_dataset
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
