"""Write shards + manifest.json atomically, read the manifest back, verify a converted dataset.

Layout of a converted dataset directory:
  <shard_dir>/manifest.json
  <shard_dir>/<split>-000000.tar ...

A conversion writes into a hidden sibling directory and swaps it into place only once
every shard and the manifest are complete, so an interrupted run never leaves a
half-written shard or manifest where a reader would find it.
"""

from __future__ import annotations

import hashlib
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
from tqdm import tqdm
from webdataset import TarWriter
from webdataset.tariterators import tarfile_samples

from segframe.data.sample import IGNORE_INDEX, SampleError, decode_sample, encode_sample
from segframe.data.sources import Source

log = logging.getLogger("segframe")

MANIFEST = "manifest.json"
FORMAT = "segframe-shards"
FORMAT_VERSION = 1


class ManifestError(RuntimeError):
    """A dataset directory without a usable manifest."""


# --------------------------------------------------------------------------- writing


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
) -> dict[str, Any]:
    """Convert every split of `source` into shards under `shard_dir`; returns the manifest."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    num_classes = len(classes)
    if len(palette) < num_classes:
        raise ValueError(f"palette has {len(palette)} colours for {num_classes} classes")
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
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "name": name,
                "classes": list(classes),
                "palette": [list(map(int, c)) for c in palette[:num_classes]],
                "ignore_index": IGNORE_INDEX,
                "splits": splits,
                "skipped": skipped,
                "warnings": _label_warnings(splits, list(classes)),
                "source": {
                    "converter": f"{type(source).__module__}.{type(source).__qualname__}",
                    "options": source.options(),
                    "fingerprint": source.fingerprint(),
                },
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "convert_seconds": round(time.time() - started, 2),
            }
            _write_json_atomic(tmp / MANIFEST, manifest)
            _swap_into_place(tmp, out)
        except BaseException:
            if state.get("writer") is not None:
                state["writer"].abort()  # an open file would keep the directory from being removed on Windows
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
    with _pool(source, num_workers) as imap:
        for split, split_items in items.items():
            writer = state["writer"] = _SplitWriter(tmp, split, shard_size, max_shard_bytes)
            pixels = np.zeros(256, dtype=np.int64)
            jobs = ((item, split, num_classes) for item in split_items)
            for status, payload, extra in tqdm(
                imap(_load_encode, jobs), total=len(split_items), desc=f"{name}/{split}", unit="img"
            ):
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
                raise SampleError(f"split {split!r} of {name}: every sample was bad; nothing to write")
            splits[split] = {
                "num_samples": sum(s["num_samples"] for s in shards),
                "shards": shards,
                "class_pixels": pixels[:num_classes].tolist(),
                "ignore_pixels": int(pixels[IGNORE_INDEX]),
            }
    return splits, skipped


def _label_warnings(splits: dict[str, Any], classes: list[str]) -> list[str]:
    """Classes no split labels at all: a wrong class list, or masks that store a class as 255
    (binary 0/255 masks), which would otherwise train silently on background only."""
    totals = np.sum([info["class_pixels"] for info in splits.values()], axis=0)
    empty = [classes[i] for i in np.flatnonzero(totals == 0)]
    if not empty:
        return []
    ignored = sum(info["ignore_pixels"] for info in splits.values())
    hint = (f"; {ignored} pixels are 255 (ignored): if your masks store a class as 255 (e.g. binary 0/255 masks), "
            "map it, e.g. data.label_map={255: 1} with data=folder" if ignored else "")
    return [f"classes {empty} have no labelled pixels in any split{hint}"]


def _plain(item: Any) -> Any:
    """A source item as JSON can hold it (ids and file names of a skipped sample)."""
    return json.loads(json.dumps(item, default=str))


class _pool:
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


class ConversionInProgress(RuntimeError):
    """Another live process is converting into the same shard directory."""


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


def _write_json_atomic(path: Path, data: Any) -> None:
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(data, indent=1))
    os.replace(part, path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading


def read_manifest(shard_dir: str | os.PathLike, convert_hint: str = "") -> dict[str, Any]:
    """Load and check `<shard_dir>/manifest.json`; refuse formats this version does not understand."""
    path = Path(shard_dir) / MANIFEST
    hint = convert_hint or "python -m segframe.convert data=<name>"
    if not path.is_file():
        raise ManifestError(f"no converted dataset at {shard_dir} ({MANIFEST} is missing). Convert it first: {hint}")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise ManifestError(f"{path} is not valid JSON ({exc}); reconvert: {hint} overwrite=true") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} is not "
            f"understood by this segframe (expects {FORMAT!r} version {FORMAT_VERSION}); reconvert: {hint} overwrite=true"
        )
    for key in ("classes", "palette", "ignore_index", "splits"):
        if key not in manifest:
            raise ManifestError(f"{path}: key {key!r} is missing; reconvert: {hint} overwrite=true")
    return manifest


def split_info(manifest: dict[str, Any], split: str, shard_dir: str | os.PathLike) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise ManifestError(
            f"{Path(shard_dir) / MANIFEST}: dataset {manifest.get('name')!r} has no split {split!r} "
            f"(it has {sorted(manifest['splits'])})"
        )
    return manifest["splits"][split]


def shard_urls(manifest: dict[str, Any], split: str, shard_dir: str | os.PathLike) -> list[tuple[str, int]]:
    """(location, sample count) of each shard of one split, in manifest order."""
    return [(str(Path(shard_dir) / s["name"]), int(s["num_samples"]))
            for s in split_info(manifest, split, shard_dir)["shards"]]


def iter_shard(url: str, expected: int | None = None) -> Iterable[dict[str, Any]]:
    """Raw samples (dicts of bytes) of one shard. A corrupt tar, or one holding fewer samples
    than the manifest says (a truncated file ends early without a tar error), names the shard."""
    advice = "run `python -m segframe.convert data=<name> verify=true`, then reconvert with overwrite=true"
    count = 0
    try:
        for sample in tarfile_samples([{"url": url}]):
            count += 1
            yield sample
    except Exception as exc:  # tarfile.ReadError, EOFError, OSError...
        raise SampleError(f"shard {url} is unreadable after {count} samples ({type(exc).__name__}: {exc}); {advice}") from exc
    if expected is not None and count != expected:
        raise SampleError(f"shard {url} holds {count} samples but the manifest says {expected} (truncated?); {advice}")


def verify(shard_dir: str | os.PathLike) -> list[str]:
    """Recompute every checksum and decode every sample; one line per problem, by shard and key."""
    manifest = read_manifest(shard_dir)
    problems: list[str] = []
    num_classes = len(manifest["classes"])
    for split, info in manifest["splits"].items():
        total = 0
        for shard in tqdm(info["shards"], desc=f"verify {split}", unit="shard"):
            path = Path(shard_dir) / shard["name"]
            if not path.is_file():
                problems.append(f"{shard['name']}: missing")
                continue
            size = path.stat().st_size
            if size != shard["bytes"]:
                problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
            if sha256_file(path) != shard["sha256"]:
                problems.append(f"{shard['name']}: sha256 differs from the manifest (file changed or corrupt)")
            count = 0
            try:
                for sample in tarfile_samples([{"url": str(path)}]):
                    count += 1
                    try:
                        decode_sample(sample, num_classes)
                    except SampleError as exc:
                        problems.append(f"{shard['name']} key {sample.get('__key__')}: {exc}")
            except Exception as exc:
                problems.append(f"{shard['name']}: unreadable after {count} samples ({type(exc).__name__}: {exc})")
            if count != shard["num_samples"]:
                problems.append(f"{shard['name']}: {count} samples, manifest says {shard['num_samples']}")
            total += count
        if total != info["num_samples"]:
            problems.append(f"split {split}: {total} samples, manifest says {info['num_samples']}")
    return problems
