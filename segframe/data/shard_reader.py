"""Reading shards safely: a shard's raw samples streamed from a path, an http(s):// URL or a
`pipe:` command, and checked against its manifest entry (sample count, size, sha256) once read to
its end. `iter_shard` (what the datamodule streams) stops at the first problem; `verify` (what
`convert verify=true` runs) reads every shard with the same checks and lists every problem.

Samples are dicts of bytes (`__key__`, `__url__`, one entry per extension); decoding them is
`data/sample.py`'s job, which never unpickles.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webdataset.tariterators import base_plus_ext

from segframe.core.commands import convert_command_for
from segframe.core.errors import RemoteError, SampleError
from segframe.core.progress import track
from segframe.data.manifest import read_manifest
from segframe.data.remote import is_remote, locate, open_stream
from segframe.data.sample import decode_sample

_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's metadata entries (e.g. __index__), never samples


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


def _tar_samples(url: str, stream: Any) -> Iterator[dict[str, Any]]:
    """Raw samples of one opened tar stream, grouped as WebDataset groups them. Not WebDataset's
    own iterators: they append their arguments to every exception's message, and its http opener
    is a curl pipe whose exit status nobody checks."""
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


@dataclass(frozen=True)
class Mismatch:
    """One way a shard read to its end differs from its manifest entry."""

    what: str      # "samples", "bytes" or "sha256"
    found: Any
    expected: Any
    why: str       # the likely cause

    def sentence(self) -> str:
        """As the reader raises it: `shard X <sentence>; <advice>`."""
        if self.what == "sha256":
            return f"has sha256 {self.found} but the manifest says {self.expected} ({self.why})"
        verb = "holds" if self.what == "samples" else "has"
        return f"{verb} {self.found} {self.what} but the manifest says {self.expected} ({self.why})"

    def brief(self) -> str:
        """As `verify` lists it: `<shard name>: <brief>`."""
        if self.what == "sha256":
            return "sha256 differs from the manifest (file changed or corrupt)"
        return f"{self.found} {self.what}, manifest says {self.expected}" + (f" ({self.why})" if self.what == "samples" else "")


def mismatches(tally: _Tally, count: int, expected: int | None, nbytes: int | None,
               sha256: str | None) -> list[Mismatch]:
    """How a shard read to its end (`tally`, `count` samples) differs from its manifest entry;
    None in the entry: not checked."""
    found: list[Mismatch] = []
    if expected is not None and count != expected:  # more: e.g. members appended to the tar
        found.append(Mismatch("samples", count, expected,
                              "truncated?" if count < expected else "modified since conversion"))
    if nbytes is not None and tally.nbytes != nbytes:
        found.append(Mismatch("bytes", tally.nbytes, nbytes, "truncated or changed since conversion"))
    if sha256 is not None and tally.sha is not None and tally.sha.hexdigest() != sha256:
        found.append(Mismatch("sha256", tally.sha.hexdigest(), sha256, "corrupt, or changed since conversion"))
    return found


def _repair_advice(url: str, convert_hint: str = "") -> str:
    hint = convert_hint or convert_command_for(Path(url).parent if not str(url).startswith("pipe:") else url)
    if is_remote(url):
        return ("the copy there is damaged or incomplete: upload the shard again from the converted directory (or "
                f"reconvert and upload it); `{hint} data.shard_dir=<location> verify=true` checks every shard there")
    return f"run `{hint} verify=true`, then reconvert with `{hint} overwrite=true`"


def _unreadable(url: str, count: int, cause: BaseException, convert_hint: str = "") -> str:
    after = f" after {count} samples" if count else ""
    if isinstance(cause, RemoteError):
        return (f"cannot read shard {url}{after}: {cause}; check data.shard_dir, that the server is reachable (for a "
                "pipe: location, run the command in a shell), and that every file listed in the manifest.json there "
                "was uploaded")
    if isinstance(cause, FileNotFoundError) and not count:
        return f"shard {url} is missing; {_repair_advice(url, convert_hint)}"
    return (f"shard {url} is unreadable after {count} samples ({type(cause).__name__}: {cause}); "
            f"{_repair_advice(url, convert_hint)}")


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
    problems = mismatches(tally, count, expected, nbytes, sha256)
    if problems:
        raise SampleError(f"shard {url} {problems[0].sentence()}; {_repair_advice(url, convert_hint)}")
    if last is not None:
        yield last


def _verify_shard(url: str, shard: dict[str, Any], num_classes: int) -> tuple[int, list[str]]:
    """(samples read, problems) of one shard: every sample decoded, then the reader's own checks
    against the manifest entry; a read that fails part-way still counts what was there."""
    name, problems = shard["name"], []
    try:
        tally = _Tally(url, hashed=True)
    except FileNotFoundError:
        return 0, [f"{name}: missing"]
    except RemoteError as exc:
        return 0, [f"{name}: cannot read {url}: {exc}"]
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
    except Exception as exc:  # noqa: BLE001 (reported as a problem of this shard)
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
    # an incomplete read knows its sample count but not the file's size or checksum
    entry = (shard["num_samples"], shard["bytes"], shard["sha256"]) if complete else (shard["num_samples"], None, None)
    found = sorted(mismatches(tally, count, *entry), key=lambda m: m.what == "samples")  # size and hash first
    problems += [f"{name}: {m.brief()}" for m in found]
    return count, problems


def verify(shard_dir: str | os.PathLike, convert_hint: str = "") -> list[str]:
    """Recompute every checksum and decode every sample; one line per problem, by shard and key.
    Remote locations are streamed (each shard read once, hashed while reading)."""
    manifest = read_manifest(shard_dir, convert_hint)
    problems: list[str] = []
    for split, info in manifest["splits"].items():
        total = 0
        for shard in track(info["shards"], len(info["shards"]), f"verify {split}", "shard"):
            count, found = _verify_shard(locate(shard_dir, shard["name"]), shard, len(manifest["classes"]))
            total, problems = total + count, problems + found
        if total != info["num_samples"]:
            problems.append(f"split {split}: {total} samples, manifest says {info['num_samples']}")
    return problems
