"""Writing a converted dataset: every split of a `Source` encoded into tar shards, in worker
processes when asked, and the manifest last.

A conversion writes into a hidden sibling directory and swaps it into place only once every
shard and the manifest are complete, so an interrupted run never leaves a half-written shard or
manifest where a reader would find it. A lock file beside the directory makes concurrent
conversions of one dataset (DDP ranks, parallel sweep jobs) convert it once.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from webdataset import TarWriter

from segframe.core.atomic import write_text_atomic
from segframe.core.errors import ConfigError, ConversionInProgress, SampleError
from segframe.core.progress import track
from segframe.data.manifest import MANIFEST, build_manifest, sha256_file
from segframe.data.remote import refuse_write
from segframe.data.sample import IGNORE_INDEX, encode_sample
from segframe.data.sources import Source
from segframe.data.tasks import check_tasks

log = logging.getLogger("segframe")


class _SplitWriter:
    """Rolls over to a new tar when a shard holds `shard_size` samples or `max_shard_bytes`."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, max_shard_bytes: int):
        self.out_dir, self.split = out_dir, split
        self.shard_size, self.max_shard_bytes = shard_size, max_shard_bytes
        self.shards: list[dict[str, Any]] = []
        self.keys: dict[str, str] = {}
        self._writer: TarWriter | None = None
        self._count = self._bytes = 0

    def write(self, entries: dict[str, bytes], sample_id: str) -> None:
        key = entries["__key__"]
        if key in self.keys:
            raise SampleError(
                f"ids {self.keys[key]!r} and {sample_id!r} both map to shard key {key!r} "
                "(characters outside [A-Za-z0-9_-] become '_'); make the ids unique"
            )
        self.keys[key] = sample_id
        if self._writer is None or self._count >= self.shard_size or self._bytes >= self.max_shard_bytes:
            self._roll()
        # mtime=0 makes a rerun byte-identical, so checksums identify content.
        self._bytes += self._writer.write(entries)  # type: ignore[union-attr]
        self._count += 1

    def _roll(self) -> None:
        self._close_current()
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self.shards.append({"name": name})
        self._writer = TarWriter(str(self.out_dir / name), encoder=False, mtime=0)
        self._count = self._bytes = 0

    def _close_current(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        entry = self.shards[-1]
        path = self.out_dir / entry["name"]
        entry.update(num_samples=self._count, bytes=path.stat().st_size, sha256=sha256_file(path))

    def close(self) -> list[dict[str, Any]]:
        self._close_current()
        return self.shards

    def abort(self) -> None:
        """Close the open tar without recording it (its directory is about to be removed)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


_WORKER_SOURCE: Source | None = None


def _init_worker(source: Source) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _load_encode(args: tuple[Any, str, int]) -> tuple[str, Any, Any]:
    """Runs in a worker: load one raw item, validate and encode it.
    Returns ("ok", (entries, id), pixel counts per label) or ("bad", message, item)."""
    item, split, num_classes = args
    assert _WORKER_SOURCE is not None
    try:
        raw = _WORKER_SOURCE.load(item)
        entries, mask = encode_sample(raw, split, num_classes)
    except (SampleError, OSError) as exc:
        return "bad", str(exc), item
    counts = np.bincount(mask.ravel(), minlength=256)
    return "ok", (entries, raw.id), counts


def write_dataset(
    source: Source,
    shard_dir: str | os.PathLike,
    name: str,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    shard_size: int = 1000,
    max_shard_bytes: int = 256 * 2**20,
    num_workers: int = 0,
    on_bad: str = "error",
    tasks: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert every split of `source` into shards under `shard_dir`; returns the manifest. `tasks`:
    the label sets its stored `classes` serve (segframe.data.tasks), written into the manifest."""
    if on_bad not in ("error", "skip"):
        raise ConfigError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    num_classes = len(classes)
    if len(palette) < num_classes:
        raise ConfigError(f"palette has {len(palette)} colours for {num_classes} classes")
    tasks = check_tasks(tasks, num_classes, name) if tasks else None
    refuse_write(shard_dir)  # converting writes local files only
    started = time.time()
    items = source.splits()  # a missing or empty dataset fails here, before anything is written
    for split, split_items in items.items():
        if not split_items:
            raise SampleError(f"split {split!r} of {name} has no samples; check the raw dataset and its lists")
    out = Path(shard_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _ConversionLock(out):
        _remove_stale(out)  # we hold the lock: whoever wrote these is gone
        tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
        tmp.mkdir()
        state: dict[str, Any] = {}
        try:
            splits, skipped = _write_splits(source, items, tmp, name, num_classes, shard_size, max_shard_bytes,
                                            num_workers, on_bad, state)
            manifest = build_manifest(name, list(classes), [list(c) for c in palette], splits, skipped, source,
                                      started, tasks)
            write_text_atomic(tmp / MANIFEST, json.dumps(manifest, indent=1))
            _swap_into_place(tmp, out)
        except BaseException:
            if state.get("writer") is not None:
                state["writer"].abort()  # an open file would keep the directory from being removed on Windows
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("converted %s into %s: %s samples in %.1f s", name, out,
             sum(s["num_samples"] for s in manifest["splits"].values()), manifest["convert_seconds"])
    for warning in manifest["warnings"]:
        log.warning("%s: %s", name, warning)
    return manifest


def _write_splits(source: Source, items: dict[str, list[Any]], tmp: Path, name: str, num_classes: int,
                  shard_size: int, max_shard_bytes: int, num_workers: int, on_bad: str,
                  state: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Shards of every split into `tmp`; (per-split manifest entries, skipped samples).
    `state["writer"]` is the split writer in use, for the caller to close on failure."""
    splits: dict[str, Any] = {}
    skipped: list[dict[str, Any]] = []
    with _WorkerPool(source, num_workers) as imap:
        for split, split_items in items.items():
            writer = state["writer"] = _SplitWriter(tmp, split, shard_size, max_shard_bytes)
            pixels = np.zeros(256, dtype=np.int64)
            bad_here = len(skipped)
            jobs = ((item, split, num_classes) for item in split_items)
            for status, payload, extra in track(imap(_load_encode, jobs), len(split_items), f"{name}/{split}", "img"):
                if status == "bad":
                    if on_bad == "error":
                        raise SampleError(f"{payload}\n(pass on_bad=skip to skip bad samples and list them in the manifest)")
                    skipped.append({"split": split, "item": _plain(extra), "problem": payload})
                    continue
                writer.write(*payload)
                pixels += extra
            shards = writer.close()
            state["writer"] = None
            if not shards:
                raise SampleError(f"split {split!r} of {name}: every sample was bad; nothing to write. "
                                  + skipped_summary(skipped[bad_here:]))
            splits[split] = {
                "num_samples": sum(s["num_samples"] for s in shards),
                "shards": shards,
                "class_pixels": pixels[:num_classes].tolist(),
                "ignore_pixels": int(pixels[IGNORE_INDEX]),
            }
    return splits, skipped


def skipped_summary(skipped: list[dict[str, Any]], first: int = 5) -> str:
    """The first few skipped samples with their problems, one per line, and how many more there are."""
    lines = [f"  {s['split']}: {s['problem']}" for s in skipped[:first]]
    more = f"\n  ... and {len(skipped) - first} more" if len(skipped) > first else ""
    return f"The first {len(lines)} skipped:\n" + "\n".join(lines) + more if skipped else ""


def _plain(item: Any) -> Any:
    """A source item as JSON can hold it (ids and file names of a skipped sample)."""
    return json.loads(json.dumps(item, default=str))


class _WorkerPool:
    """`imap` in-process (num_workers=0) or over worker processes, ordered either way."""

    def __init__(self, source: Source, num_workers: int):
        self.source, self.num_workers, self._pool = source, num_workers, None

    def __enter__(self):
        if self.num_workers <= 0:
            _init_worker(self.source)
            return map
        # fork is cheap on Linux; elsewhere fork is unsafe with threads (macOS) or absent (Windows)
        self._pool = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(
            self.num_workers, initializer=_init_worker, initargs=(self.source,)
        )
        return self._bounded_imap

    def _bounded_imap(self, fn: Any, jobs: Iterable[Any]) -> Iterable[Any]:
        """`Pool.imap` queues every job and every result at once; when writing is slower than the
        workers (a network disk), encoded samples would pile up in memory. Windows bound that."""
        window: list[Any] = []
        for job in jobs:
            window.append(job)
            if len(window) == 32 * self.num_workers:
                yield from self._pool.imap(fn, window, chunksize=4)
                window = []
        yield from self._pool.imap(fn, window, chunksize=4)

    def __exit__(self, *exc):
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


class _ConversionLock:
    """An exclusive lock on `.NAME.lock` beside the shard directory, held while converting.
    The operating system releases it when the process dies, so a leftover temporary directory
    with no lock held is known to be stale (no pid checks, which break on pid reuse and Windows)."""

    def __init__(self, out: Path):
        self.out, self.path = out, out.parent / f".{out.name}.lock"
        self._file: Any = None

    def __enter__(self) -> _ConversionLock:
        self._file = open(self.path, "a+b")  # noqa: SIM115 (held until __exit__)
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(self._file.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ConversionInProgress(
                f"another process is converting into {self.out} (it holds {self.path}); "
                "wait for it to finish, or stop it and run the command again"
            ) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()  # closing releases the lock; the (empty) file stays, so the lock stays one inode


def wait_for_conversion(shard_dir: str | os.PathLike, poll: float = 1.0) -> bool:
    """Block while another process converts into `shard_dir` (holds its lock); True if it waited.
    Several processes started at once on an unconverted dataset (torchrun/srun ranks, parallel
    sweep jobs) then convert it once: the first converts, the others wait and read its manifest."""
    out, waited = Path(shard_dir), False
    if not out.parent.is_dir():
        return False
    while True:
        try:
            with _ConversionLock(out):
                return waited
        except ConversionInProgress:
            if not waited:
                log.info("another process is converting into %s; waiting for it", out)
            waited = True
            time.sleep(poll)


def _remove_stale(out: Path) -> None:
    """Leftovers of an interrupted conversion are deleted, never read. Only exactly
    `.NAME.partial-PID` / `.NAME.old-PID`: never another dataset's `.NAME.v2.partial-PID`."""
    for kind in ("partial", "old"):
        for stale in out.parent.glob(f".{out.name}.{kind}-*"):
            if stale.name.rsplit("-", 1)[-1].isdigit():
                shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
