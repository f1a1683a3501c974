"""The dataset side of the entry points: `python -m segframe.convert` (convert, verify, browse, and
describe a user's dataset once), whether a converted dataset still matches its config, and what
training needs of it before it starts (converted, same converter settings, classes with labels).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from segframe.cli import this_command
from segframe.config import ConfigError, check_keys, plain
from segframe.data.described import check_name, describe
from segframe.data.remote import is_remote, locate, refuse_write
from segframe.data.shards import (MANIFEST, ConversionInProgress, ManifestError, empty_classes, read_manifest,
                                  split_info, verify, wait_for_conversion, write_dataset)

log = logging.getLogger("segframe")


def _data_choice(data: DictConfig) -> str:
    """The data config file this command composed (`folder` for `data=folder data.name=cells`)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    return choice or data.name


def convert_command(data: DictConfig) -> str:
    """The convert command for `data` as composed now: its config file, and the dataset name when
    that differs (`data=folder data.name=cells`)."""
    choice = _data_choice(data)
    return f"python -m segframe.convert data={choice}" + (f" data.name={data.name}" if choice != data.name else "")


def convert_dataset(data: DictConfig, num_workers: int = 0, on_bad: str = "error", source: Any = None) -> dict[str, Any]:
    from segframe.data.sources.files import bit_palette

    source = source if source is not None else instantiate(data.source)
    classes = list(data.classes)
    # no palette in the config: the masks' own (palette PNGs from an annotation tool), else VOC's colour map
    own = source.mask_palette(len(classes)) if hasattr(source, "mask_palette") and not data.get("palette") else None
    palette = [list(c) for c in data.palette] if data.get("palette") else own or bit_palette(len(classes))
    return write_dataset(source, data.shard_dir, data.name, classes, palette,
                         shard_size=int(data.get("shard_size", 1000)), num_workers=num_workers, on_bad=on_bad)


def convert(cfg: DictConfig, run_dir: Path | None = None) -> int:
    """Entry logic of `python -m segframe.convert`; returns the exit code."""
    check_keys(cfg, "convert")
    data = cfg.data
    if cfg.verify:
        problems = verify(data.shard_dir, convert_command(data))
        for p in problems:
            print(f"PROBLEM {p}")
        print(f"verify {data.shard_dir}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        if problems:
            print(f"reconvert it: {convert_command(data)} overwrite=true")
        return 1 if problems else 0
    if cfg.browse:
        return _browse(cfg, run_dir or Path.cwd())
    refuse_write(data.shard_dir)  # remote locations are read, never converted into
    described = _data_choice(data) != data.name  # data=folder data.name=cells: written as data/cells.yaml
    if described:
        check_name(data.name)
    source = instantiate(data.source)
    if (Path(data.shard_dir) / MANIFEST).is_file() and not cfg.overwrite:
        try:
            manifest = read_manifest(data.shard_dir)
        except ManifestError as exc:
            print(f"existing conversion is unusable ({exc}); converting again")
        else:
            counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
            print(f"{data.name} is already converted at {data.shard_dir} {counts}; pass overwrite=true to redo it")
            stale = _stale(manifest, data, source)
            for line in stale:
                print(f"  but {line}: pass overwrite=true to convert it again")
            if described and not stale:
                _describe(data)
            return 0
    start = time.time()
    manifest = convert_dataset(data, num_workers=cfg.num_workers, on_bad=cfg.on_bad, source=source)
    counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
    print(f"converted {data.name} -> {data.shard_dir} {counts} in {time.time() - start:.1f}s"
          + (f"; skipped {len(manifest['skipped'])} bad sample(s), listed in the manifest" if manifest["skipped"] else ""))
    empty, ignored = empty_classes(manifest["splits"], list(manifest["classes"]))
    if empty and ignored and "label_map" in data:
        print(f"classes {empty} have no labelled pixels; if your masks store them as 255 (0/255 binary masks), "
              f"convert again with the label map:\n  {this_command('convert', 'data.label_map={255: 1}', 'overwrite=true')}")
    if described:
        _describe(data)
    print(f"look at it: python -m segframe.convert data={data.name} browse=true" if described else
          f"look at it: {convert_command(data)} browse=true")
    return 0


def _describe(data: DictConfig) -> None:
    path = describe(data, this_command("convert"))
    print(f"described {data.name} in {path}: from now on data={data.name} stands for these settings, e.g. "
          f"`python -m segframe.train data={data.name}`")


def _stale(manifest: dict[str, Any], data: DictConfig, source: Any) -> list[str]:
    """How the existing conversion differs from what the config and the raw files would give now."""
    recorded = manifest.get("source", {})
    lines = []
    if list(manifest["classes"]) != list(data.classes):
        lines.append(f"it has classes {manifest['classes']} and the config now says {list(data.classes)}")
    options = json.loads(json.dumps(source.options()))  # tuples -> lists, as the manifest holds them
    # where the raw files live does not change the shards; the fingerprint below sees content changes
    def settings(opts: Any) -> dict[str, Any]:
        return {k: v for k, v in (opts or {}).items() if not k.endswith("root")}

    if settings(recorded.get("options")) != settings(options):
        lines.append(f"it was converted with {recorded.get('options')} and the config now says {options}")
    try:
        if _portable(recorded.get("fingerprint")) != _portable(json.loads(json.dumps(source.fingerprint()))):
            lines.append("the raw files (list files, file count or total size) changed since it was converted")
    except (OSError, ValueError):
        pass  # raw data moved or removed after conversion: the shards are all that is needed
    return lines


def _portable(fingerprint: Any) -> Any:
    """A fingerprint without what moving the raw data changes (roots, absolute or relative paths):
    list files' hashes, file counts and total bytes remain."""
    if isinstance(fingerprint, dict):
        return {k: _portable(v) for k, v in fingerprint.items() if k not in ("root", "listing_sha256", "unpaired_masks")}
    return fingerprint


def _browse(cfg: DictConfig, run_dir: Path) -> int:
    from segframe.data.browse import browse

    data = cfg.data
    read_manifest(data.shard_dir, convert_command(data))
    split = cfg.browse_split or data.get("val_split")
    out = Path(cfg.browse_file) if cfg.browse_file else run_dir / f"browse-{data.name}-{split}.png"
    for path in browse(data.shard_dir, split, int(cfg.browse_count), out):
        print(f"wrote {path}")
    return 0


def check_source_options(data: DictConfig, manifest: dict[str, Any]) -> None:
    """Shards converted with other converter settings (a split mode, a val size, a seed...) than the
    config asks for would silently train and evaluate on other splits: refuse them."""
    recorded = (manifest.get("source") or {}).get("options") or {}
    try:
        wanted = {k: v for k, v in plain(data.source).items() if not k.startswith("_")}
    except Exception:  # noqa: BLE001 (an unresolvable source node: nothing to compare)
        return
    def same(a: Any, b: Any) -> bool:  # an empty list or mapping is no setting, as null is
        return json.dumps(a or None, sort_keys=True) == json.dumps(b or None, sort_keys=True)

    differ = {k: (recorded[k], wanted[k]) for k in wanted if k in recorded and not k.endswith(("root", "dir"))
              and not same(recorded[k], wanted[k])}
    if differ:
        detail = ", ".join(f"{k}={was!r} (config: {now!r})" for k, (was, now) in differ.items())
        fix = ("set those data.source options to the recorded values, or point data.shard_dir at a dataset converted "
               "with yours (convert locally, then upload)" if is_remote(data.shard_dir) else
               f"reconvert with `{convert_command(data)} overwrite=true`, or set data.shard_dir to another folder")
        raise ConfigError(f"{locate(data.shard_dir, MANIFEST)} was converted with {detail}; {fix}")


def ensure_converted(data: DictConfig) -> dict[str, Any]:
    """The manifest of `data`; the embedded dataset is converted on first use, others must be.
    Only into a local directory: a remote location (URL, pipe:) is never converted into."""
    try:
        manifest = read_manifest(data.shard_dir, convert_command(data))
        check_source_options(data, manifest)
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
            check_source_options(data, manifest)
            return manifest
        log.info("converting %s into %s (first use)", data.name, data.shard_dir)
        with contextlib.suppress(ConversionInProgress):  # another process got the lock first: wait for it
            return convert_dataset(data)


def check_labelled(data: DictConfig, manifest: dict[str, Any], split: str) -> None:
    """Classes with no labelled pixel in the training split can never be learned: say so when training
    starts (the converter's warning is long gone by then), and refuse when no class but the first
    (background) has any, unless data.allow_empty_classes=true."""
    info = split_info(manifest, split, data.shard_dir)
    classes = list(manifest["classes"])
    empty, ignored = empty_classes({split: info}, classes)
    if not empty:
        return
    fix = (f"; if your masks store a class as 255 (0/255 binary masks), map it and convert again: "
           f"`{convert_command(data)} \"data.label_map={{255: 1}}\" overwrite=true`" if ignored and "label_map" in data
           else "; check data.classes against the values your masks hold")
    problem = f"classes {empty} of {data.name} have no labelled pixels in its {split} split ({ignored} pixels are 255){fix}"
    if set(empty) >= set(classes[1:]) and not data.get("allow_empty_classes", False):
        switch = "data.allow_empty_classes=true" if "allow_empty_classes" in data else "+data.allow_empty_classes=true"
        raise ConfigError(f"{problem}. Only {classes[0]!r} could be learned; to train anyway, pass {switch}")
    log.warning("%s", problem)
