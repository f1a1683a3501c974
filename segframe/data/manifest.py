"""The dataset contract, `<shard_dir>/manifest.json`: what a conversion writes (`build_manifest`) and
what every reader checks before it trusts a shard (`read_manifest`), in one file so the two mirror
each other.

Layout of a converted dataset directory:
  <shard_dir>/manifest.json
  <shard_dir>/<split>-000000.tar ...
`shard_dir` is a location (segframe.data.remote): a local directory, an http(s):// URL or a
`pipe:` command; the manifest is fetched the same way as the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from segframe.core.commands import convert_command_for
from segframe.core.errors import LocationError, ManifestError, RemoteError
from segframe.data.remote import check_name, is_remote, locate, read_bytes
from segframe.data.sample import IGNORE_INDEX
from segframe.data.tasks import TASKS, View, empty_in, view

MANIFEST = "manifest.json"
FORMAT = "segframe-shards"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------- writing


def build_manifest(name: str, classes: list[str], palette: list[list[int]], splits: dict[str, Any],
                   skipped: list[dict[str, Any]], source: Any, started: float,
                   tasks: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a finished conversion: per split its shards (name, samples, bytes, sha256)
    and label pixel counts, plus what it was converted from (converter, options, fingerprint). With
    `tasks` (segframe.data.tasks), the label sets read from its stored classes."""
    views = [view({"name": name, "tasks": tasks}, t) for t in tasks] if tasks else \
        [View(None, list(classes), [list(c) for c in palette])]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "classes": list(classes),
        "palette": [list(map(int, c)) for c in palette[:len(classes)]],
        "ignore_index": IGNORE_INDEX,
        "splits": splits,
        "skipped": skipped,
        **({TASKS: tasks} if tasks else {}),
        "warnings": [w for v in views for w in label_warnings(splits, v)],
        "source": {
            "converter": f"{type(source).__module__}.{type(source).__qualname__}",
            "options": source.options(),
            "fingerprint": source.fingerprint(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "convert_seconds": round(time.time() - started, 2),
    }


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def empty_classes(splits: dict[str, Any], classes: list[str]) -> tuple[list[str], int]:
    """(classes with no labelled pixel in `splits`, pixels labelled 255 there), from the manifest's
    per-split counts (for a task's classes: segframe.data.tasks.empty_in)."""
    return empty_in(View(None, list(classes), []), splits)


def label_warnings(splits: dict[str, Any], v: View) -> list[str]:
    """Classes no split labels at all: a wrong class list, or masks that store a class as 255
    (binary 0/255 masks), which would otherwise train silently on background only."""
    empty, ignored = empty_in(v, splits)
    if not empty:
        return []
    hint = (f"; {ignored} pixels are 255 (ignored): if your masks store a class as 255 (e.g. binary 0/255 masks), "
            "map it, e.g. \"data.label_map={255: 1}\" with data=folder" if ignored and v.task is None else "")
    return [f"{f'task {v.task}: ' if v.task else ''}classes {empty} have no labelled pixels in any split{hint}"]


# --------------------------------------------------------------------------- reading


def read_manifest(shard_dir: str | os.PathLike, convert_hint: str = "") -> dict[str, Any]:
    """Load and check `<shard_dir>/manifest.json`; refuse formats this version does not understand.
    `convert_hint` is the command that converts this dataset (default: named after the folder)."""
    hint = convert_hint or convert_command_for(shard_dir)
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
    """One split's manifest entry. `a+b` is the union of splits a and b (a cross-validation fold's
    training data: data.fold): their shards in that order, their sample and pixel counts summed."""
    names = str(split).split("+")
    missing = [n for n in names if n not in manifest["splits"]]
    if missing:
        folds = sum(1 for n in manifest["splits"] if n.startswith("fold"))  # converted with data.num_folds
        wants_folds = any(n.startswith("fold") for n in missing)
        hint = (f"; it was converted into {folds} folds for cross-validation: pass data.num_folds={folds} "
                f"data.fold=K (K from 0 to {folds - 1})" if folds else
                f"; convert it into folds first: python -m segframe.convert data={manifest.get('name')} "
                f"data.num_folds=N" if wants_folds else "")
        raise ManifestError(
            f"{locate(shard_dir, MANIFEST)}: dataset {manifest.get('name')!r} has no split "
            f"{' or '.join(repr(n) for n in missing)} (it has {sorted(manifest['splits'])}){hint}"
        )
    if len(names) == 1:
        return manifest["splits"][split]
    parts = [manifest["splits"][n] for n in names]
    return {"num_samples": sum(p["num_samples"] for p in parts), "shards": [s for p in parts for s in p["shards"]],
            "class_pixels": [sum(c) for c in zip(*(p["class_pixels"] for p in parts))],
            "ignore_pixels": sum(p["ignore_pixels"] for p in parts)}


def shard_urls(manifest: dict[str, Any], split: str, shard_dir: str | os.PathLike,
               checksums: bool = False) -> list[tuple[Any, ...]]:
    """(location, sample count) of each shard of one split, in manifest order; with `checksums`,
    (location, sample count, bytes, sha256). A location is a path, a URL or a pipe: command."""
    shards = split_info(manifest, split, shard_dir)["shards"]
    if checksums:
        return [(locate(shard_dir, s["name"]), int(s["num_samples"]), s.get("bytes"), s.get("sha256")) for s in shards]
    return [(locate(shard_dir, s["name"]), int(s["num_samples"])) for s in shards]
