"""Memory.

  train_memory   peak RSS (getrusage) of a few training steps of one model, in a fresh process so the
                 peak is that run's alone; plus torch.cuda.max_memory_allocated on a GPU
  loader_memory  RSS growth while one pass of the loader reads N, 4N, 16N samples (decode only,
                 in-process with num_workers=0, and the worker's own RSS with num_workers=1), the shard
                 stream vs the per-file dataset: a streaming reader stays flat as the dataset grows
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segframe.bench.common import fmt, mib, peak_rss, rss, run_in_child, table


@dataclass
class TrainMemoryRow:
    model: str
    batch: int
    size: int
    steps: int
    rss_start_mib: float  # after importing torch and segframe
    rss_model_mib: float  # model and optimizer built, batch made
    peak_rss_mib: float  # getrusage peak over the whole process
    cuda_peak_mib: float = math.nan


def train_memory(backbone: str, batch: int, size: int, steps: int, device: str = "cpu", classes: int = 21,
                 stride: int = 8) -> TrainMemoryRow:
    """Runs `steps` plain fp32 training steps in this process; call it through run_in_child."""
    # imported here, not with this module: the loader passes run in child processes that import this
    # module too, and their RSS figures should not include the model code (segframe.models, torchvision)
    from segframe.bench.step import build_step, make_batch

    dev = torch.device(device)
    start = rss()
    step = build_step(backbone, "baseline", dev, classes, stride)
    images, masks = make_batch(batch, size, classes, dev)
    built = rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(steps):
        step(images, masks)
    cuda_peak = math.nan
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        cuda_peak = mib(torch.cuda.max_memory_allocated(dev))
    return TrainMemoryRow(backbone, batch, size, steps, mib(start), mib(built), mib(peak_rss()), cuda_peak)


@dataclass
class LoaderMemoryRow:
    reader: str  # shards | files
    samples: int
    seconds: float
    rss_before_mib: float
    rss_peak_mib: float  # highest RSS sampled during the pass (num_workers=0)
    worker_before_mib: float = math.nan  # the worker's RSS at its first batch (num_workers=1)
    worker_peak_mib: float = math.nan
    data_mib: float = math.nan  # bytes on disk of what was read (shards, or image + mask files)

    @property
    def growth_mib(self) -> float:
        return self.rss_peak_mib - self.rss_before_mib

    @property
    def worker_growth_mib(self) -> float:
        return self.worker_peak_mib - self.worker_before_mib


def loader_pass(reader: str, source: list, batch: int = 16, workers: bool = True, every: int = 4) -> LoaderMemoryRow:
    """One pass over `source` (shard (url, count) pairs, or per-file items), decode only, RSS sampled
    every `every` batches: in-process (num_workers=0), then (with `workers`) in one worker process."""
    from segframe.bench.loader import file_loader, shard_loader
    from segframe.data.datamodule import ShardStream

    def loader(num_workers: int):
        if reader == "shards":
            return shard_loader(ShardStream(source, None, None), batch, num_workers)
        return file_loader(source, None, batch, num_workers, shuffle=False)

    start = time.perf_counter()
    before = peak = rss() or 0
    samples = 0
    for i, (images, _) in enumerate(loader(0)):
        samples += images.shape[0]
        if i % every == 0:
            peak = max(peak, rss() or 0)
    peak = max(peak, rss() or 0)
    row = LoaderMemoryRow(reader, samples, time.perf_counter() - start, mib(before), mib(peak))
    paths = [url for url, _ in source] if reader == "shards" else [p for _, image, mask in source for p in (image, mask)]
    row.data_mib = mib(sum(os.path.getsize(p) for p in paths))
    if workers:
        it = iter(loader(1))
        pids = [w.pid for w in getattr(it, "_workers", [])]  # DataLoader's worker processes
        first = worker_peak = math.nan
        for i, _ in enumerate(it):
            if pids and i % every == 0:
                now = rss(pids[0])
                if now is not None:
                    first = now if math.isnan(first) else first
                    worker_peak = now if math.isnan(worker_peak) else max(worker_peak, now)
        row.worker_before_mib, row.worker_peak_mib = mib(first), mib(worker_peak)
        del it
    return row


def shapes_data(root: Path, base: int, factors: list[int], image_size: int = 64) -> tuple[Path, list[Any]]:
    """Shards of max(factors) * `base` generated shapes images (`image_size` px PNG) in shards of
    `base / 2` samples, and the same images and masks as files (the shards' own bytes), so that the
    first f * base samples of either are a dataset of that size. Returns (shard dir, items)."""
    from segframe.data.manifest import read_manifest, shard_urls
    from segframe.data.sample import IMAGE_ENTRIES, MASK_EXT
    from segframe.data.shard_reader import iter_shard
    from segframe.data.shard_writer import write_dataset
    from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource

    shard_dir = root / "shards"
    write_dataset(ShapesSource(num_train=base * max(factors), num_val=1, size=image_size, seed=0), shard_dir,
                  "shapes", CLASSES, PALETTE, shard_size=max(1, base // 2))
    images, masks = root / "files" / "images", root / "files" / "masks"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    items = []
    for url, count in shard_urls(read_manifest(shard_dir), "train", shard_dir):
        for sample in iter_shard(url, count):
            ext = next(e for e in IMAGE_ENTRIES if e in sample)
            key = sample["__key__"]
            (images / f"{key}.{ext}").write_bytes(sample[ext])
            (masks / f"{key}.png").write_bytes(sample[MASK_EXT])
            items.append((key, str(images / f"{key}.{ext}"), str(masks / f"{key}.png")))
    return shard_dir, items


def loader_memory(shard_dir: Path, items: list, base: int, factors: list[int], batch: int = 16,
                  workers: bool = True, isolate: bool = True) -> list[LoaderMemoryRow]:
    """For each factor f: one pass over the first f * `base` samples of the shards, then of the
    files, each in a fresh process (`isolate`) so that one pass's allocations do not hide another's."""
    from segframe.data.manifest import read_manifest, shard_urls

    urls = shard_urls(read_manifest(shard_dir), "train", shard_dir)
    rows = []
    for f in factors:
        want, shards = f * base, []
        for url, count in urls:
            if sum(c for _, c in shards) >= want:
                break
            shards.append((url, count))
        for reader, source in (("shards", shards), ("files", items[:want])):
            args = (reader, source, batch, workers)
            rows.append(run_in_child(loader_pass, *args) if isolate else loader_pass(*args))
    return rows


def report_train(rows: list[TrainMemoryRow]) -> str:
    return table(["model", "batch", "size", "steps", "RSS at start MiB", "model+batch MiB", "peak RSS MiB",
                  "peak - model MiB", "cuda max allocated MiB"],
                 [[r.model, str(r.batch), str(r.size), str(r.steps), r.rss_start_mib, r.rss_model_mib, r.peak_rss_mib,
                   r.peak_rss_mib - r.rss_model_mib, r.cuda_peak_mib] for r in rows])


def report_loader(rows: list[LoaderMemoryRow]) -> str:
    lines = [table(["reader", "samples", "data MiB", "pass s", "RSS before MiB", "RSS peak MiB", "growth MiB",
                    "worker RSS first MiB", "worker peak MiB", "worker growth MiB"],
                   [[r.reader, str(r.samples), r.data_mib, r.seconds, r.rss_before_mib, r.rss_peak_mib, r.growth_mib,
                     r.worker_before_mib, r.worker_peak_mib, r.worker_growth_mib] for r in rows])]
    for reader in ("shards", "files"):
        mine = [r for r in rows if r.reader == reader]
        if len(mine) > 1:
            small, big = mine[0], mine[-1]
            lines.append(f"{reader}: {big.samples / small.samples:.0f}x the samples -> peak RSS x"
                         f"{big.rss_peak_mib / small.rss_peak_mib:.3f} in-process, growth {fmt(small.growth_mib)} -> "
                         f"{fmt(big.growth_mib)} MiB; worker growth {fmt(small.worker_growth_mib)} -> "
                         f"{fmt(big.worker_growth_mib)} MiB, while the data read grew {fmt(small.data_mib)} -> "
                         f"{fmt(big.data_mib)} MiB")
    return "\n".join(lines)
