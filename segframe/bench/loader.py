"""Loader throughput.

  bench_loader     samples/s of SegDataModule's shard pipeline (tar read + decode [+ augment]) per worker count
  bench_files      the shard stream (windowed scale-pad-crop, reduced JPEG decode) vs the usual per-file
                   map-style Dataset (open image.jpg + mask.png, decode, the albumentations chain) on the
                   same images, same augmentation distribution, workers and batch size; interleaved rounds
  bench_dataloader DataLoader knobs on the shard stream over several short epochs, worker start-up
                   included: persistent_workers, prefetch_factor, pin_memory (CUDA only)
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from segframe.bench.common import fmt, table
from segframe.data.batch import pad_collate
from segframe.data.datamodule import ShardStream, TrainStream
from segframe.data.manifest import read_manifest, shard_urls
from segframe.data.sample import check_mask, decode_mask

Item = tuple[str, str, str]  # (id, image path, mask path), as the converters' items


class FileDataset(Dataset):
    """The usual per-file map-style dataset, the yardstick of bench_files: written as torchvision
    writes one (datasets.VOCSegmentation opens `Image.open(image).convert("RGB")` and the mask as its
    palette indices; the segmentation reference then makes the target `torch.as_tensor(...,
    dtype=torch.int64)`), with an albumentations chain on the numpy arrays and labels checked (the
    shard stream checks them too). It decodes with PIL, not segframe's decode_image, so that what
    segframe does to read faster counts for the shards and not for the yardstick; the arrays are the
    same (tests/test_bench.py)."""

    def __init__(self, items: list[Item], transform: Callable[..., dict] | None = None,
                 num_classes: int | None = None):
        self.items, self.transform, self.num_classes = list(items), transform, num_classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, image_path, mask_path = self.items[index]
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        mask = decode_mask(Path(mask_path).read_bytes(), mask_path)  # np.asarray(Image.open(mask)) for P/L PNGs
        if self.num_classes is not None:
            check_mask(mask, self.num_classes, mask_path)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                torch.as_tensor(mask, dtype=torch.int64))


def _seed_worker(worker_id: int) -> None:
    """Forked workers share the augmentation RNG state: give each its own (as ShardStream does)."""
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**31)


def file_loader(items: list[Item], transform: Any, batch: int, workers: int, num_classes: int | None = None,
                shuffle: bool = True, **kwargs: Any) -> DataLoader:
    return DataLoader(FileDataset(items, transform, num_classes), batch_size=batch, shuffle=shuffle, drop_last=shuffle,
                      num_workers=workers, collate_fn=pad_collate, worker_init_fn=_seed_worker, **kwargs)


def shard_stream(shard_dir: str | Path, split: str, transform: Any, batch: int, batches_per_epoch: int | None = None,
                 shuffle_buffer: int = 64, seed: int = 0) -> TrainStream:
    """SegDataModule's training stream (one pass of whole batches per epoch unless told otherwise)."""
    manifest = read_manifest(shard_dir)
    urls = shard_urls(manifest, split, shard_dir)
    samples = sum(n for _, n in urls)
    return TrainStream(urls, transform, len(manifest["classes"]), batches_per_epoch or max(1, samples // batch),
                       batch, shuffle_buffer=shuffle_buffer, seed=seed)


def shard_loader(stream: ShardStream, batch: int, workers: int, **kwargs: Any) -> DataLoader:
    return DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=pad_collate, **kwargs)


def voc_like_data(root: Path, num_images: int, shard_size: int = 100,
                  size: tuple[int, int] = (375, 500)) -> tuple[Path, list[Item]]:
    """A generated VOC tree (JPEG + palette PNG; at the default 375x500, ~100 KiB per pair) and the
    same images as shards (split "all", converted by the `voc` converter: file bytes kept as they are).
    Returns (shard dir, per-file items in the shards' order)."""
    from segframe.bench.synthetic import write_voc_tree
    from segframe.data.shard_writer import write_dataset
    from segframe.data.sources.voc import CLASSES, PALETTE, VOCSource, voc_item

    raw = root / "raw"
    write_voc_tree(raw, num_images, size)
    voc_root = raw / "VOCdevkit" / "VOC2012"
    ids = sorted(p.stem for p in (voc_root / "JPEGImages").iterdir())
    (voc_root / "ImageSets/Segmentation/all.txt").write_text("".join(f"{i}\n" for i in ids))
    shard_dir = root / "shards"
    write_dataset(VOCSource(str(voc_root), splits=["all"]), shard_dir, "voc_like", CLASSES, PALETTE,
                  shard_size=shard_size)
    return shard_dir, [voc_item(voc_root, i) for i in ids]


def measure_rate(loader: DataLoader, seconds: float, set_epoch: Callable[[int], None] | None = None) -> tuple[float, int]:
    """(samples/s, samples counted): whole epochs until `seconds` have passed; the first batch is
    not counted (the first worker start-up is not throughput; later epochs' restarts are)."""
    n, start, epoch = 0, None, 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        for images, _ in loader:
            if start is None:
                start = time.perf_counter()
                continue
            n += images.shape[0]
        if start is not None and time.perf_counter() - start >= seconds:
            break
        epoch += 1
    return n / (time.perf_counter() - start), n


def bench_loader(shard_dir: Path, crop: int, batch: int, workers: list[int], seconds: float,
                 split: str = "train") -> list[tuple]:
    """[(pipeline, workers, samples/s, per worker)] through SegDataModule.train_dataloader() over `split`."""
    from segframe.data.augment import default_train, identity
    from segframe.data.datamodule import SegDataModule

    rows = []
    for label, transform in (("decode", identity()), ("decode+augment", default_train(crop_size=crop))):
        for w in workers:
            dm = SegDataModule(str(shard_dir), transform, identity(), batch_size=batch, num_workers=w, shuffle_buffer=64,
                               train_split=split)
            rate, _ = measure_rate(dm.train_dataloader(), seconds, dm.set_epoch)
            rows.append((label, w, rate, rate / max(w, 1)))
    return rows


@dataclass
class FilesRow:
    """One worker count: a (shards, files) pair of rates per round, measured back to back."""

    workers: int
    shard_rates: list[float]
    file_rates: list[float]
    shard_samples: int = 0
    file_samples: int = 0

    @property
    def ratios(self) -> list[float]:
        return [s / f for s, f in zip(self.shard_rates, self.file_rates)]

    @property
    def ratio(self) -> float:
        return float(np.median(self.ratios))

    @property
    def shard_rate(self) -> float:
        return float(np.median(self.shard_rates))

    @property
    def file_rate(self) -> float:
        return float(np.median(self.file_rates))


def bench_files(shard_dir: Path, items: list[Item], crop: int, batch: int, workers: list[int],
                seconds: float, rounds: int = 3) -> list[FilesRow]:
    """Shards vs per-file reading of the same images and the same augmentation distribution
    (default_train at `crop`), per worker count. The shard stream runs SegDataModule's pipeline
    (the windowed scale-pad-crop, deciding the JPEG decode); the files run the plain albumentations
    chain on decoded files (`reference=True`). Interleaved: each round measures every worker count,
    shards and files back to back, the first of the pair alternating, so drift on a shared machine
    falls on both; each round gives one ratio per worker count."""
    from segframe.data.augment import default_train

    num_classes = len(read_manifest(shard_dir)["classes"])
    rows = [FilesRow(w, [], []) for w in workers]
    for round_ in range(rounds):
        for row in rows:
            for side in (("shards", "files") if round_ % 2 == 0 else ("files", "shards")):
                if side == "shards":
                    stream = shard_stream(shard_dir, "all", default_train(crop_size=crop), batch)
                    rate, n = measure_rate(shard_loader(stream, batch, row.workers), seconds, stream.set_epoch)
                    row.shard_rates.append(rate)
                    row.shard_samples += n
                else:
                    files = file_loader(items, default_train(crop_size=crop, reference=True), batch, row.workers,
                                        num_classes)
                    rate, n = measure_rate(files, seconds)
                    row.file_rates.append(rate)
                    row.file_samples += n
    return rows


@dataclass
class DataLoaderRow:
    knob: str
    status: str = "ok"
    reason: str = ""
    rate: float = math.nan  # samples/s over all epochs, start-up included
    first_batch_s: float = math.nan  # mean wait for an epoch's first batch (worker start-up)
    epoch_s: float = math.nan
    distinct_epochs: int = 0  # epochs whose first batch differs from every other epoch's
    epochs: int = 0
    speedup: float = math.nan


def _fingerprint(images: torch.Tensor) -> str:
    return hashlib.md5(images.cpu().numpy().tobytes()).hexdigest()


def dataloader_knobs(workers: int, prefetch: list[int], device: torch.device) -> list[tuple[str, dict | None, str]]:
    """[(knob, DataLoader kwargs or None, skip reason)]: the baseline is SegDataModule's loader
    today (persistent_workers=False, prefetch_factor=2, pin_memory only with CUDA)."""
    cuda = device.type == "cuda"
    base = {"persistent_workers": False, "pin_memory": False} | ({"prefetch_factor": 2} if workers else {})
    knobs: list[tuple[str, dict | None, str]] = [("baseline", base, "")]
    no_workers = "needs num_workers > 0 (set --dl-workers)"
    knobs.append(("persistent_workers", base | {"persistent_workers": True}, "") if workers else
                 ("persistent_workers", None, no_workers))
    for p in prefetch:
        if p != 2:
            knobs.append((f"prefetch_factor={p}", base | {"prefetch_factor": p}, "") if workers else
                         (f"prefetch_factor={p}", None, no_workers))
    knobs.append(("pin_memory", base | {"pin_memory": True}, "") if cuda else
                 ("pin_memory", None, "page-locked batches only speed up host-to-GPU copies: CUDA only"))
    return knobs


def bench_dataloader(shard_dir: Path, crop: int, batch: int, workers: int, epochs: int, batches: int,
                     prefetch: list[int], device: torch.device) -> list[DataLoaderRow]:
    """Each knob alone against the baseline on the shard stream: `epochs` epochs of `batches`
    batches, timed from asking for the first batch (so worker start-up counts), each batch moved
    to `device` as training would (non_blocking, which matters only for pinned memory)."""
    from segframe.data.augment import default_train

    rows = []
    for knob, kwargs, reason in dataloader_knobs(workers, prefetch, device):
        if kwargs is None:
            rows.append(DataLoaderRow(knob, "skipped", reason))
            continue
        stream = shard_stream(shard_dir, "all", default_train(crop_size=crop), batch, batches_per_epoch=batches)
        loader = shard_loader(stream, batch, workers, **kwargs)
        firsts, firsts_hash, n = [], [], 0
        start = time.perf_counter()
        for epoch in range(epochs):
            stream.set_epoch(epoch)  # what SegModule does each epoch (workers see it when they start)
            asked = time.perf_counter()
            for i, (images, masks) in enumerate(loader):
                images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
                if i == 0:
                    firsts.append(time.perf_counter() - asked)
                    firsts_hash.append(_fingerprint(images))
                n += images.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
        del loader  # shuts persistent workers down
        rows.append(DataLoaderRow(knob, rate=n / total, first_batch_s=sum(firsts) / len(firsts),
                                  epoch_s=total / epochs, epochs=epochs,
                                  distinct_epochs=sum(firsts_hash.count(h) == 1 for h in firsts_hash)))
    base = rows[0].rate
    for row in rows:
        row.speedup = row.rate / base
    return rows


def report_loader(rows: list[tuple]) -> str:
    return table(["pipeline", "workers", "samples/s", "per worker"], [list(r) for r in rows])


def report_files(rows: list[FilesRow]) -> str:
    """Median rates over the rounds, and the median and spread (min-max) of the per-round ratio."""
    return table(["workers", "shards samples/s", "per worker", "files samples/s", "per worker", "shards / files",
                  "min-max", "rounds", "samples (shards, files)"],
                 [[str(r.workers), r.shard_rate, r.shard_rate / max(r.workers, 1), r.file_rate,
                   r.file_rate / max(r.workers, 1), fmt(r.ratio, 2), f"{min(r.ratios):.2f}-{max(r.ratios):.2f}",
                   str(len(r.ratios)), f"{r.shard_samples}, {r.file_samples}"] for r in rows])


def report_dataloader(rows: list[DataLoaderRow]) -> str:
    lines = [table(["knob", "samples/s", "speed-up", "first batch s", "epoch s", "distinct epochs"],
                   [[r.knob, "skipped", "-", "-", "-", "-"] if r.status != "ok" else
                    [r.knob, r.rate, fmt(r.speedup, 2), fmt(r.first_batch_s, 2), fmt(r.epoch_s, 2),
                     f"{r.distinct_epochs}/{r.epochs}"] for r in rows])]
    lines += [f"  {r.knob} skipped: {r.reason}" for r in rows if r.status != "ok"]
    if any(r.status == "ok" and r.distinct_epochs < r.epochs for r in rows):
        lines.append("  distinct epochs < epochs: those epochs began with the same batch. TrainStream.set_epoch() runs "
                     "in the main process; persistent workers keep the dataset copy they started with, so every epoch "
                     "replays epoch 0's shard order, shuffle and augmentations")
    return "\n".join(lines)
