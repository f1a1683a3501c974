"""Write shards + manifest.json atomically, read the manifest back, verify a converted dataset.

Layout of a converted dataset directory:
  <shard_dir>/manifest.json
  <shard_dir>/<split>-000000.tar ...
Readers also take an http(s):// URL or a pipe: command for <shard_dir> (see data/remote.py).

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
import re
import sys
import tarfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from webdataset import TarWriter
from webdataset.tariterators import base_plus_ext

from segframe.atomic import write_text_atomic
from segframe.data.remote import (LocationError, RemoteError, check_name, is_remote, locate, open_stream, read_bytes,
                                  refuse_write)
from segframe.data.sample import IGNORE_INDEX, SampleError, decode_sample, encode_sample
from segframe.data.sources import Source

log = logging.getLogger("segframe")

MANIFEST = "manifest.json"
FORMAT = "segframe-shards"
FORMAT_VERSION = 1


_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's metadata entries (e.g. __index__), never samples


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


def empty_classes(splits: dict[str, Any], classes: list[str]) -> tuple[list[str], int]:
    """(classes with no labelled pixel in `splits`, pixels labelled 255 there), from the manifest's
    per-split counts."""
    totals = np.sum([info["class_pixels"] for info in splits.values()], axis=0)
    return [classes[i] for i in np.flatnonzero(totals == 0)], sum(info["ignore_pixels"] for info in splits.values())


def _label_warnings(splits: dict[str, Any], classes: list[str]) -> list[str]:
    """Classes no split labels at all: a wrong class list, or masks that store a class as 255
    (binary 0/255 masks), which would otherwise train silently on background only."""
    empty, ignored = empty_classes(splits, classes)
    if not empty:
        return []
    hint = (f"; {ignored} pixels are 255 (ignored): if your masks store a class as 255 (e.g. binary 0/255 masks), "
            "map it, e.g. \"data.label_map={255: 1}\" with data=folder" if ignored else "")
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


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- reading
# `shard_dir` is a location (segframe.data.remote): a local directory, an http(s):// URL or a
# `pipe:` command; the manifest is fetched the same way as the shards.


def default_convert_hint(location: str | os.PathLike) -> str:
    """The convert command for a dataset known only by where it lives: `<data_dir>/<name>` holds dataset
    `name` (the callers that know the config pass `conversion.convert_command` instead)."""
    name = Path(str(location).rstrip("/")).name if not str(location).startswith("pipe:") else ""
    return f"python -m segframe.convert data={name or '<name>'}"


def read_manifest(shard_dir: str | os.PathLike, convert_hint: str = "") -> dict[str, Any]:
    """Load and check `<shard_dir>/manifest.json`; refuse formats this version does not understand."""
    hint = convert_hint or default_convert_hint(shard_dir)
    path = locate(shard_dir, MANIFEST)
    if is_remote(shard_dir):
        try:
            text = read_bytes(path)
        except RemoteError as exc:
            raise ManifestError(
                f"cannot read the dataset manifest {path} (data.shard_dir={shard_dir}): {exc}. Check data.shard_dir "
                "(the place the converted directory, manifest.json and its .tar files, was uploaded to), that the "
                "server is reachable or, for pipe:, that the command works in a shell. Remote locations are never "
                f"converted into: convert into a local directory (`{hint} data.shard_dir=DIR`) and upload DIR"
            ) from exc
        fix = f"upload it again from a good conversion ({hint} overwrite=true)"
    else:
        if not Path(path).is_file():
            raise ManifestError(
                f"no converted dataset at {shard_dir} ({MANIFEST} is missing). Convert it first: {hint}")
        text = Path(path).read_bytes()
        fix = f"reconvert: {hint} overwrite=true"
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    except ValueError as exc:
        raise ManifestError(f"{path} is not a valid manifest ({exc}); {fix}") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r} is not "
            f"understood by this segframe (expects {FORMAT!r} version {FORMAT_VERSION}); {fix}"
        )
    for key in ("classes", "palette", "ignore_index", "splits"):
        if key not in manifest:
            raise ManifestError(f"{path}: key {key!r} is missing; {fix}")
    for split, info in manifest["splits"].items():
        for shard in info.get("shards", []):
            try:
                check_name(shard.get("name"))  # names become parts of URLs and shell commands
            except LocationError as exc:
                raise ManifestError(f"{path}: split {split!r} lists shard {exc}; {fix}") from None
    return manifest


def split_info(manifest: dict[str, Any], split: str, shard_dir: str | os.PathLike) -> dict[str, Any]:
    if split not in manifest["splits"]:
        raise ManifestError(
            f"{locate(shard_dir, MANIFEST)}: dataset {manifest.get('name')!r} has no split {split!r} "
            f"(it has {sorted(manifest['splits'])})"
        )
    return manifest["splits"][split]


def shard_urls(manifest: dict[str, Any], split: str, shard_dir: str | os.PathLike,
               checksums: bool = False) -> list[tuple[Any, ...]]:
    """(location, sample count) of each shard of one split, in manifest order; with `checksums`,
    (location, sample count, bytes, sha256). A location is a path, a URL or a pipe: command."""
    shards = split_info(manifest, split, shard_dir)["shards"]
    if checksums:
        return [(locate(shard_dir, s["name"]), int(s["num_samples"]), s.get("bytes"), s.get("sha256")) for s in shards]
    return [(locate(shard_dir, s["name"]), int(s["num_samples"])) for s in shards]


class _Tally:
    """A shard's bytes as the tar reader pulls them: counted, hashed on request, and the
    transport failure remembered so that it is reported as itself (an HTTP status, a command's
    exit status and stderr) rather than as the tar error it causes downstream."""

    def __init__(self, url: str, hashed: bool):
        self.nbytes, self.failure = 0, None
        self.sha = hashlib.sha256() if hashed else None
        self.stream = open_stream(url)

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.stream.read(n)
        except Exception as exc:
            self.failure = exc
            raise
        self.nbytes += len(data)
        if self.sha is not None:
            self.sha.update(data)
        return data

    def drain(self) -> None:
        """Read past the tar's end-of-archive padding to the end of the file (for the size, the
        hash, and a pipe's exit status)."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # noqa: BLE001 (closing an abandoned download: nothing to report)
            pass


def _tar_samples(url: str, stream: Any) -> Iterable[dict[str, Any]]:
    """Raw samples (dicts of bytes: `__key__`, `__url__`, one entry per extension) of one opened
    tar stream, grouped as WebDataset groups them. Not WebDataset's own iterators: they append
    their arguments to every exception's message, and its http opener is a curl pipe whose exit
    status nobody checks."""
    current: dict[str, Any] | None = None
    with tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            name = info.name
            if not info.isreg() or _META.match(name):
                continue
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            tar.members = []  # a stream of any length in constant memory
            key, ext = base_plus_ext(name)
            if key is None:
                continue
            ext = ext.lower()
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            if ext in current:
                raise ValueError(f"{name}: two files for key {key!r} with extension {ext!r}")
            current[ext] = data
    if current is not None:
        yield current


def _repair_advice(url: str, convert_hint: str = "") -> str:
    hint = convert_hint or default_convert_hint(Path(url).parent if not str(url).startswith("pipe:") else url)
    if is_remote(url):
        return ("the copy there is damaged or incomplete: upload the shard again from the converted directory (or "
                f"reconvert and upload it); `{hint} data.shard_dir=<location> verify=true` checks every shard there")
    return f"run `{hint} verify=true`, then reconvert with `{hint} overwrite=true`"


def _fetch_advice() -> str:
    return ("check data.shard_dir, that the server is reachable (for a pipe: location, run the command in a "
            "shell), and that every file listed in the manifest.json there was uploaded")


def _unreadable(url: str, count: int, cause: BaseException, convert_hint: str = "") -> str:
    after = f" after {count} samples" if count else ""
    if isinstance(cause, RemoteError):
        return f"cannot read shard {url}{after}: {cause}; {_fetch_advice()}"
    if isinstance(cause, FileNotFoundError) and not count:
        return f"shard {url} is missing; {_repair_advice(url, convert_hint)}"
    return (f"shard {url} is unreadable after {count} samples ({type(cause).__name__}: {cause}); "
            f"{_repair_advice(url, convert_hint)}")


def _mismatch(tally: _Tally, count: int, expected: int | None, nbytes: int | None, sha256: str | None) -> str:
    """How a shard read to its end differs from its manifest entry ('' when it does not)."""
    if expected is not None and count < expected:
        return f"holds {count} samples but the manifest says {expected} (truncated?)"
    if expected is not None and count > expected:  # e.g. members appended to the tar
        return f"holds {count} samples but the manifest says {expected} (modified since conversion)"
    if nbytes is not None and tally.nbytes != nbytes:
        return f"has {tally.nbytes} bytes but the manifest says {nbytes} (truncated or changed since conversion)"
    if sha256 is not None and tally.sha is not None and tally.sha.hexdigest() != sha256:
        return (f"has sha256 {tally.sha.hexdigest()} but the manifest says {sha256} "
                "(corrupt, or changed since conversion)")
    return ""


def iter_shard(url: str, expected: int | None = None, nbytes: int | None = None,
               sha256: str | None = None, convert_hint: str = "") -> Iterable[dict[str, Any]]:
    """Raw samples (dicts of bytes) of one shard at `url` (a path, an http(s) URL or a pipe: command).
    Once the shard is read to its end, its sample count (`expected`), size (`nbytes`) and sha256
    (hashed while streaming, when `sha256` is given) must match the manifest. A failed download,
    a corrupt tar, or a mismatch raises SampleError naming the shard."""
    count = 0
    tally: _Tally | None = None
    last = None  # held back until the shard is checked: a cut-off tar ends in a partial sample
    try:
        tally = _Tally(url, sha256 is not None)
        for sample in _tar_samples(url, tally):
            if last is not None:
                yield last
            count, last = count + 1, sample
        tally.drain()
    except Exception as exc:  # RemoteError, tarfile.ReadError, EOFError, OSError...
        cause = tally.failure if tally is not None and tally.failure is not None else exc
        raise SampleError(_unreadable(url, max(count - 1, 0), cause, convert_hint)) from cause
    finally:
        if tally is not None:
            tally.close()
    problem = _mismatch(tally, count, expected, nbytes, sha256)
    if problem:
        raise SampleError(f"shard {url} {problem}; {_repair_advice(url, convert_hint)}")
    if last is not None:
        yield last


def verify(shard_dir: str | os.PathLike, convert_hint: str = "") -> list[str]:
    """Recompute every checksum and decode every sample; one line per problem, by shard and key.
    Remote locations are streamed (each shard read once, hashed while reading)."""
    manifest = read_manifest(shard_dir, convert_hint)
    problems: list[str] = []
    num_classes = len(manifest["classes"])
    for split, info in manifest["splits"].items():
        total = 0
        for shard in tqdm(info["shards"], desc=f"verify {split}", unit="shard"):
            name, url = shard["name"], locate(shard_dir, shard["name"])
            try:
                tally = _Tally(url, hashed=True)
            except FileNotFoundError:
                problems.append(f"{name}: missing")
                continue
            except RemoteError as exc:
                problems.append(f"{name}: cannot read {url}: {exc}")
                continue
            count, complete = 0, False
            try:
                for sample in _tar_samples(url, tally):
                    count += 1
                    try:
                        decode_sample(sample, num_classes)
                    except SampleError as exc:
                        problems.append(f"{name} key {sample.get('__key__')}: {exc}")
                tally.drain()
                complete = True
            except Exception as exc:
                if tally.failure is not None:
                    problems.append(f"{name}: cannot read {url} after {count} samples: {tally.failure}")
                else:
                    problems.append(f"{name}: unreadable after {count} samples ({type(exc).__name__}: {exc})")
                    try:
                        tally.drain()  # the size and checksum of what is there still tell what is wrong
                        complete = True
                    except Exception:  # noqa: BLE001 (already reported)
                        pass
            finally:
                tally.close()
            if complete:
                if tally.nbytes != shard["bytes"]:
                    problems.append(f"{name}: {tally.nbytes} bytes, manifest says {shard['bytes']}")
                if tally.sha.hexdigest() != shard["sha256"]:  # type: ignore[union-attr]
                    problems.append(f"{name}: sha256 differs from the manifest (file changed or corrupt)")
            if count != shard["num_samples"]:
                how = "truncated?" if count < shard["num_samples"] else "modified since conversion"
                problems.append(f"{name}: {count} samples, manifest says {shard['num_samples']} ({how})")
            total += count
        if total != info["num_samples"]:
            problems.append(f"split {split}: {total} samples, manifest says {info['num_samples']}")
    return problems
