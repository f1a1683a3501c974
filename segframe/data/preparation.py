"""A dataset made ready from its config node (`data`): converted when it is not (the embedded one
on first use), and checked against the config before anything trains on it. One rule answers "is
this conversion stale?" (`conversion_diff`): `convert` reports it, `train` refuses on it.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from hydra.utils import instantiate

from segframe.core.commands import convert_command
from segframe.core.errors import ConfigError, ConversionInProgress, ManifestError
from segframe.data.described import config_path, is_described
from segframe.data.manifest import MANIFEST, read_manifest, split_info
from segframe.data.remote import is_remote, locate
from segframe.data.shard_writer import wait_for_conversion, write_dataset
from segframe.data.sources.files import bit_palette
from segframe.data.tasks import empty_in, view

log = logging.getLogger("segframe")


def convert_dataset(data: Any, num_workers: int = 0, on_bad: str = "error", source: Any = None) -> dict[str, Any]:
    """Convert the dataset `data` describes into `data.shard_dir`; returns its manifest."""
    source = source if source is not None else instantiate(data.source)
    size = {"shard_size": int(data.get("shard_size", 1000)), "num_workers": num_workers, "on_bad": on_bad}
    if hasattr(source, "tasks"):  # stored codes that several tasks read (data.task picks one when training)
        classes, palette = source.stored_classes()
        return write_dataset(source, data.shard_dir, data.name, classes, palette, tasks=source.tasks(), **size)
    classes = list(data.classes)
    # no palette in the config: the masks' own (palette PNGs from an annotation tool), else VOC's colour map
    own = source.mask_palette(len(classes)) if hasattr(source, "mask_palette") and not data.get("palette") else None
    palette = [list(c) for c in data.palette] if data.get("palette") else own or bit_palette(len(classes))
    return write_dataset(source, data.shard_dir, data.name, classes, palette, **size)


def _json(value: Any) -> Any:
    """As the manifest holds it (tuples -> lists); an empty list or mapping is no setting, as null is."""
    return json.loads(json.dumps(value)) or None


def _settings(options: dict[str, Any] | None) -> dict[str, Any]:
    """Converter options that decide the shards. Where the raw files live (`root`, `voc_root`, ...)
    does not: a raw dataset may move after conversion, and the fingerprint sees its content."""
    return {k: _json(v) for k, v in (options or {}).items() if not k.endswith("root")}


def _portable(fingerprint: Any) -> Any:
    """A fingerprint without what moving the raw data changes (roots, absolute or relative paths):
    list files' hashes, file counts and total bytes remain."""
    if isinstance(fingerprint, dict):
        return {k: _portable(v) for k, v in fingerprint.items() if k not in ("root", "listing_sha256", "unpaired_masks")}
    return fingerprint


def conversion_diff(manifest: dict[str, Any], data: Any, source: Any = None, raw_files: bool = False) -> list[str]:
    """How the conversion behind `manifest` differs from what the config `data` would convert now:
    the class list and the converter's settings (a split mode, a val size, a seed, split lists...);
    with `raw_files`, also the raw files themselves (skipped when they are gone: the shards are all
    training needs). Empty when it is current."""
    recorded = manifest.get("source") or {}
    lines = []
    if data.get("task") and not manifest.get("tasks"):  # converted before this dataset's tasks existed
        return [f"it was converted without the per-task label maps data.task={data.task} needs"]
    classes = view(manifest, data.get("task")).classes
    if classes != list(data.classes):
        task = f" for data.task={data.task}" if data.get("task") else ""
        lines.append(f"it has classes {classes}{task} and the config now says {list(data.classes)}")
    if source is None and data.get("source") is None:  # a data config for shards alone (e.g. remote ones)
        return lines
    source = source if source is not None else instantiate(data.source)
    was, now = _settings(recorded.get("options")), _settings(source.options())
    differ = {k: (was.get(k), now.get(k)) for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)}
    if differ:
        lines.append("it was converted with " + ", ".join(f"{k}={a!r} (config: {b!r})" for k, (a, b) in differ.items()))
    if raw_files:
        try:
            if _portable(recorded.get("fingerprint")) != _portable(json.loads(json.dumps(source.fingerprint()))):
                lines.append("the raw files (list files, file count or total size) changed since it was converted")
        except (OSError, ValueError):
            pass  # raw data moved or removed after conversion: the shards are all that is needed
    return lines


def check_current(data: Any, manifest: dict[str, Any]) -> None:
    """Refuse shards converted from other classes or converter settings than the config asks for:
    they would silently train and evaluate on other splits."""
    lines = conversion_diff(manifest, data)
    if lines:
        fix = ("set those data.source options to the recorded values, or point data.shard_dir at a dataset converted "
               "with yours (convert locally, then upload)" if is_remote(data.shard_dir) else
               f"reconvert with `{convert_command(data)} overwrite=true`, or set data.shard_dir to another folder")
        if is_described(data.name) and not is_remote(data.shard_dir):
            fix += (f" (the config is {config_path(data.name)}: edit it back to the recorded values to use these "
                    "shards as they are)")
        raise ConfigError(f"{locate(data.shard_dir, MANIFEST)}: " + "; ".join(lines) + f"; {fix}")


def ensure_converted(data: Any) -> dict[str, Any]:
    """The manifest of `data`, current with the config; the embedded dataset is converted on first
    use, others must be. Only into a local directory: a remote location is never converted into."""
    try:
        manifest = read_manifest(data.shard_dir, convert_command(data))
        check_current(data, manifest)
        return manifest
    except ManifestError:
        if not data.get("auto_convert", False) or is_remote(data.shard_dir):
            raise
    while True:
        # several processes may start on it at once (DDP ranks under torchrun/srun, joblib sweep
        # jobs): one converts, the others wait for its lock and read the manifest it wrote
        wait_for_conversion(data.shard_dir)
        with contextlib.suppress(ManifestError):  # whoever held the lock may have just finished
            manifest = read_manifest(data.shard_dir, convert_command(data))
            check_current(data, manifest)
            return manifest
        log.info("converting %s into %s (first use)", data.name, data.shard_dir)
        with contextlib.suppress(ConversionInProgress):  # another process got the lock first: wait for it
            return convert_dataset(data)


def check_labelled(data: Any, manifest: dict[str, Any], split: str) -> None:
    """Classes with no labelled pixel in the training split can never be learned: say so when training
    starts (the converter's warning is long gone by then), and refuse when no class but the first
    (background) has any, unless data.allow_empty_classes=true."""
    info = split_info(manifest, split, data.shard_dir)
    task = view(manifest, data.get("task"))
    classes = task.classes
    empty, ignored = empty_in(task, {split: info})
    if not empty:
        return
    fix = (f"; if your masks store a class as 255 (0/255 binary masks), map it and convert again: "
           f"`{convert_command(data)} \"data.label_map={{255: 1}}\" overwrite=true`" if ignored and "label_map" in data
           else f"; the data.task={task.task} masks of these samples have none" if task.task
           else "; check data.classes against the values your masks hold")
    problem = f"classes {empty} of {data.name} have no labelled pixels in its {split} split ({ignored} pixels are 255){fix}"
    if set(empty) >= set(classes[1:]) and not data.get("allow_empty_classes", False):
        switch = "data.allow_empty_classes=true" if "allow_empty_classes" in data else "+data.allow_empty_classes=true"
        raise ConfigError(f"{problem}. Only {classes[0]!r} could be learned; to train anyway, pass {switch}")
    log.warning("%s", problem)
