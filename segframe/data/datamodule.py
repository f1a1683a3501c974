"""LightningDataModule over a converted dataset: reads only manifest.json and shards.

Train: every rank yields exactly `len(loader)` batches per epoch (the same on every rank,
so DDP never waits on a rank that ran out of data). Shards are dealt to (rank, worker)
consumers in a seeded order reshuffled every epoch, samples pass a seeded shuffle buffer,
and a consumer that reaches the end of its shards starts over on a new shuffle.

Eval: every sample is seen exactly once per epoch whatever the number of ranks and workers:
whole shards are dealt out when there are at least as many shards as consumers, otherwise
each consumer reads every shard and keeps every n-th sample.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segframe.core.commands import convert_command_for
from segframe.data.batch import as_tensors, pad_collate
from segframe.data.manifest import read_manifest, shard_urls, split_info
from segframe.data.sample import decode_sample, open_sample
from segframe.data.shard_reader import iter_shard
from segframe.data.tasks import View, view

Transform = Callable[..., dict]


class ShardStream(IterableDataset):
    """Decoded, augmented (image uint8[3,H,W], mask uint8[H,W]) pairs from the shards of one split.

    Eval streams have no length on purpose: Lightning stops an epoch after len(loader)
    batches, and per-worker partial batches would make any reported length cut samples off.
    """

    def __init__(
        self,
        shards: list[tuple],
        transform: Transform | None,
        num_classes: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        verify_checksums: bool = False,
        convert_hint: str = "",
        task: View | None = None,
    ):
        """`shards`: (location, sample count) or (location, sample count, bytes, sha256) per shard;
        a shard's size is checked when known, its sha256 only with `verify_checksums`. `convert_hint`:
        the dataset's convert command, for the advice a damaged shard's error gives. `task`: relabels
        each mask (segframe.data.tasks); `num_classes` is then the stored classes' count."""
        if not shards:
            raise ValueError("ShardStream needs at least one shard")
        self.checks = {s[0]: (s[2], s[3] if verify_checksums else None) for s in shards if len(s) >= 4}
        self.convert_hint = convert_hint
        self.shards = [(s[0], int(s[1])) for s in shards]
        self.transform, self.num_classes, self.task = transform, num_classes, task
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0  # set from the main process before each epoch's workers start
        self._passes = 0  # iterations of this copy inside one worker process

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _current_epoch(self) -> int:
        """The epoch this iteration belongs to. A fresh worker copy (or the main process) sees
        `set_epoch`'s value; a persistent worker keeps the copy it was started with, so it counts
        its own passes on top of that value (one pass per epoch)."""
        if get_worker_info() is None:
            return self.epoch
        self._passes += 1
        return self.epoch + self._passes - 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        workers, worker = _worker()
        epoch = self._current_epoch()
        worker = self._role(workers, worker, epoch)
        # every (rank, worker) pair is one consumer of shards
        consumer, consumers = self.rank * workers + worker, self.world_size * workers
        rng = random.Random(hash((self.seed, epoch, consumer)) & 0xFFFFFFFF)
        if self.transform is not None and hasattr(self.transform, "set_random_seed"):
            # forked workers inherit one RNG state: give each its own stream of augmentations
            self.transform.set_random_seed(rng.randrange(2**31))
        for sample in self._samples(consumer, consumers, rng, epoch, workers, worker):
            image, mask = self._augmented(sample)
            yield as_tensors(image, mask)

    def _augmented(self, sample: dict) -> tuple[np.ndarray, np.ndarray]:
        """Decoded and transformed. A transform with `apply_encoded` (WindowedScaleCrop) decodes the
        image itself, so that it can decode a JPEG it will shrink at a reduced DCT scale."""
        if hasattr(self.transform, "apply_encoded"):
            encoded, mask, _ = open_sample(sample, self.num_classes)
            out = self.transform.apply_encoded(encoded, self._relabel(mask))
            return out["image"], out["mask"]
        image, mask, _ = decode_sample(sample, self.num_classes)
        mask = self._relabel(mask)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return image, mask

    def _relabel(self, mask: np.ndarray) -> np.ndarray:
        return mask if self.task is None else self.task.relabel(mask)

    def _role(self, workers: int, worker: int, epoch: int) -> int:
        """Which worker's part of the epoch this worker plays (its own, but in a resumed epoch)."""
        return worker

    def _samples(self, consumer: int, consumers: int, rng: random.Random, epoch: int, workers: int,
                 worker: int) -> Iterator[dict]:
        """Each sample exactly once over all consumers: whole shards, or every n-th sample."""
        if len(self.shards) >= consumers:
            for url, count in self.shards[consumer::consumers]:
                yield from self._read(url, count)
        else:
            index = 0
            for url, count in self.shards:
                for sample in self._read(url, count):
                    if index % consumers == consumer:
                        yield sample
                    index += 1

    def _read(self, url: str, count: int) -> Iterable[dict]:
        """One shard's raw samples, checked against the manifest once read to its end."""
        nbytes, sha256 = self.checks.get(url, (None, None))
        return iter_shard(url, count, nbytes=nbytes, sha256=sha256, convert_hint=self.convert_hint)


class TrainStream(ShardStream):
    """Endless shuffled stream cut to exactly `batches_per_epoch` whole batches per rank."""

    def __init__(self, shards: list[tuple], transform: Transform | None, num_classes: int,
                 batches_per_epoch: int, batch_size: int, shuffle_buffer: int = 0, seed: int = 0, rank: int = 0,
                 world_size: int = 1, verify_checksums: bool = False, convert_hint: str = "", task: View | None = None):
        super().__init__(shards, transform, num_classes, seed, rank, world_size, verify_checksums, convert_hint, task)
        self.batches_per_epoch, self.batch_size, self.shuffle_buffer = batches_per_epoch, batch_size, shuffle_buffer
        self._resume: tuple[int | None, int] = (None, 0)  # (epoch, batches already trained in it)

    def __len__(self) -> int:
        # samples per epoch on this rank; the DataLoader divides by batch_size
        return self.batches_per_epoch * self.batch_size

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """A run resumed inside `epoch` after `batches_done` of its batches: that epoch's pass
        continues the same seeded order without them (no sample twice, none skipped)."""
        self._resume = (epoch, batches_done)

    def _role(self, workers: int, worker: int, epoch: int) -> int:
        # the DataLoader takes batch i from worker i % workers, starting again at worker 0 in a new
        # process: after `done` batches, worker w makes the batches worker (w + done) % workers made
        resumed_epoch, done = self._resume
        return (worker + done) % workers if epoch == resumed_epoch else worker

    def _samples(self, consumer: int, consumers: int, rng: random.Random, epoch: int, workers: int,
                 worker: int) -> Iterator[dict]:
        # each worker batches its own samples, so quotas are dealt in whole batches, as the DataLoader
        # takes them: batch i from worker i % workers
        batches = _share(self.batches_per_epoch, workers, worker)
        resumed_epoch, done = self._resume
        skip = _share(done, workers, worker) if epoch == resumed_epoch else 0
        if batches - skip <= 0:
            return
        samples = self._endless(consumer, consumers, rng, epoch)
        # the batches trained before the checkpoint: drawn in order and dropped undecoded (their
        # augmentation draws are not replayed, so the rest of this epoch's crops differ from an
        # uninterrupted run's; the samples and their order do not)
        for _ in itertools.islice(samples, skip * self.batch_size):
            pass
        yield from itertools.islice(samples, (batches - skip) * self.batch_size)

    def _endless(self, consumer: int, consumers: int, rng: random.Random, epoch: int) -> Iterator[dict]:
        """Passes over this consumer's shards; the shuffle buffer is flushed at the end of each pass
        so an epoch that is one pass yields each of its samples once."""
        for repeat in itertools.count():
            order = list(self.shards)
            random.Random(hash((self.seed, epoch, repeat)) & 0xFFFFFFFF).shuffle(order)
            # consumers share one order per epoch (same seed) so together they cover every shard;
            # with fewer shards than consumers every consumer reads all shards
            mine = order[consumer::consumers] if len(order) >= consumers else order
            one_pass = (sample for url, count in mine for sample in self._read(url, count))
            yield from _shuffled(one_pass, self.shuffle_buffer, rng)


def _worker() -> tuple[int, int]:
    """(number of DataLoader workers, this worker's index); (1, 0) in the main process."""
    info = get_worker_info()
    return (info.num_workers, info.id) if info else (1, 0)


def _share(n: int, workers: int, worker: int) -> int:
    """Worker `worker`'s part of n batches dealt round-robin to `workers` workers."""
    return n // workers + (1 if worker < n % workers else 0)


def _shuffled(stream: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    if bufsize <= 1:
        yield from stream
        return
    buf: list[dict] = []
    for item in stream:
        if len(buf) < bufsize:
            buf.append(item)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


class SegDataModule(pl.LightningDataModule):
    """Batches of (uint8 images [B,3,H,W], uint8 masks [B,H,W]) from `shard_dir`; after Lightning
    moves a batch to the device, on_after_batch_transfer widens the masks to int64 (and SegModule
    normalises the images)."""

    def __init__(
        self,
        shard_dir: str,
        train_transform: Transform | None = None,
        eval_transform: Transform | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        shuffle_buffer: int = 256,
        seed: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        pin_memory: bool = True,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        convert_hint: str = "",
        verify_checksums: bool = False,
        task: str | None = None,
    ):
        """`shard_dir`: a local directory, an http(s):// URL or a pipe: command (see data/remote.py).
        `verify_checksums`: hash every shard while reading it and compare with the manifest's sha256.
        Loader knobs: `pin_memory` page-locks batches for faster host-to-GPU copies (used only
        when CUDA is there); `persistent_workers` keeps worker processes between epochs (the
        per-epoch reshuffle still happens: each worker counts its epochs); `prefetch_factor`
        batches each worker keeps ready (None: torch's default, 2). Both apply with num_workers > 0.
        `task`: which label set of a conversion that serves several (data.task; segframe.data.tasks)."""
        super().__init__()
        self.shard_dir, self.train_transform, self.eval_transform = shard_dir, train_transform, eval_transform
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.pin_memory, self.persistent_workers, self.prefetch_factor = pin_memory, persistent_workers, prefetch_factor
        self.verify_checksums = verify_checksums
        self.convert_hint = convert_hint or convert_command_for(shard_dir)
        self.manifest = read_manifest(shard_dir, self.convert_hint)
        self.view = view(self.manifest, task)
        self.num_classes = len(self.view.classes)
        self._stored = len(self.manifest["classes"])  # the codes in the shards' masks
        self._train: ShardStream | None = None
        self._restored: tuple[int, int] | None = None  # (epoch, batches done) of the checkpoint resumed from

    @property
    def classes(self) -> list[str]:
        return list(self.view.classes)

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.view.palette]

    def class_pixels(self, split: str) -> list[int]:
        """Labelled pixels per class in `split` (for class weighting), as the task sees them."""
        info = split_info(self.manifest, split, self.shard_dir)
        return self.view.pixels(info["class_pixels"], info["ignore_pixels"])[0]

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def set_epoch(self, epoch: int) -> None:
        if self._train is not None:
            self._train.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        info = split_info(self.manifest, self.train_split, self.shard_dir)
        # one pass over the data per epoch, in whole batches, the same count on every rank
        batches = max(1, info["num_samples"] // (self.batch_size * world))
        self._train = TrainStream(
            shard_urls(self.manifest, self.train_split, self.shard_dir, checksums=True), self.train_transform,
            self._stored, batches_per_epoch=batches, batch_size=self.batch_size, shuffle_buffer=self.shuffle_buffer,
            seed=self.seed, rank=rank, world_size=world, verify_checksums=self.verify_checksums,
            convert_hint=self.convert_hint, task=self.view,
        )
        # Lightning builds this loader (for estimated_stepping_batches) before it restores the loop
        # counters, and starts the first epoch's workers before on_train_epoch_start (set_epoch): a
        # resumed run takes its epoch, and the batches of it already trained, from load_state_dict
        trainer = getattr(self, "trainer", None)
        epoch, done = self._restored or (int(trainer.current_epoch) if trainer is not None else 0, 0)
        self._restored = None
        if done >= batches:  # restored at the end of an epoch: this loader's first pass is the next epoch's
            epoch, done = epoch + 1, 0
        self._train.set_epoch(epoch)
        self._train.resume_at(epoch, done)
        return self._loader(self._train, self.batch_size)

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: the epoch and how many of its batches were trained."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        return {"epoch": int(trainer.current_epoch),
                "batches_done": int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._restored = (int(state_dict["epoch"]), int(state_dict["batches_done"]))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Masks travel as uint8 (8x fewer bytes through the loader and to the GPU): widened here, on
        the device, to the int64 targets losses index with."""
        images, masks = batch
        return images, masks.long()

    def eval_dataloader(self, split: str) -> DataLoader:
        rank, world = self._rank_world()
        stream = ShardStream(shard_urls(self.manifest, split, self.shard_dir, checksums=True), self.eval_transform,
                             self._stored, rank=rank, world_size=world, verify_checksums=self.verify_checksums,
                             convert_hint=self.convert_hint, task=self.view)
        return self._loader(stream, self.eval_batch_size)

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.test_split)

    def _loader(self, stream: ShardStream, batch_size: int) -> DataLoader:
        workers = {"persistent_workers": self.persistent_workers, "prefetch_factor": self.prefetch_factor} \
            if self.num_workers > 0 else {}  # torch refuses both without worker processes
        return DataLoader(
            stream, batch_size=batch_size, num_workers=self.num_workers, collate_fn=pad_collate,
            pin_memory=self.pin_memory and torch.cuda.is_available(), **workers,
        )
