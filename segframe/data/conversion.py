"""What `python -m segframe.convert` does: convert a dataset (or report that its conversion is
current), verify it, browse it, and describe a user's dataset once as a data config."""

from __future__ import annotations

import time
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from segframe.core.commands import convert_command, data_choice, this_command
from segframe.core.config import check_keys
from segframe.core.errors import ManifestError
from segframe.data.browse import browse
from segframe.data.described import changes, check_name, describe, is_described
from segframe.data.manifest import MANIFEST, empty_classes, read_manifest
from segframe.data.preparation import conversion_diff, convert_dataset
from segframe.data.remote import refuse_write
from segframe.data.shard_reader import verify
from segframe.data.shard_writer import skipped_summary


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
    described = data_choice(data) != data.name  # data=folder data.name=cells: written as data/cells.yaml
    if described:
        check_name(data.name)
    # data=cells "data.label_map={255: 1}": the settings given here go into cells.yaml once they convert,
    # so that the next `train data=cells` means them (and does not refuse the shards as stale)
    updated = changes(data) if not described and is_described(data.name) else []
    source = instantiate(data.source)
    if (Path(data.shard_dir) / MANIFEST).is_file() and not cfg.overwrite:
        try:
            manifest = read_manifest(data.shard_dir)
        except ManifestError as exc:
            print(f"existing conversion is unusable ({exc}); converting again")
        else:
            counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
            print(f"{data.name} is already converted at {data.shard_dir} {counts}; pass overwrite=true to redo it")
            stale = conversion_diff(manifest, data, source, raw_files=True)
            for line in stale:
                print(f"  but {line}: pass overwrite=true to convert it again")
            if (described or updated) and not stale:
                _describe(data, updated)
            return 0
    start = time.time()
    manifest = convert_dataset(data, num_workers=cfg.num_workers, on_bad=cfg.on_bad, source=source)
    counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
    print(f"converted {data.name} -> {data.shard_dir} {counts} in {time.time() - start:.1f}s"
          + (f"; skipped {len(manifest['skipped'])} bad sample(s), all listed in the manifest's \"skipped\". "
             + skipped_summary(manifest["skipped"]) if manifest["skipped"] else ""))
    empty, ignored = empty_classes(manifest["splits"], list(manifest["classes"]))
    if empty and ignored and "label_map" in data:
        print(f"classes {empty} have no labelled pixels; if your masks store them as 255 (0/255 binary masks), "
              f"convert again with the label map:\n  {this_command('convert', 'data.label_map={255: 1}', 'overwrite=true')}")
    if described or updated:
        _describe(data, updated)
    print(f"look at it: python -m segframe.convert data={data.name} browse=true" if described or updated else
          f"look at it: {convert_command(data)} browse=true")
    return 0


def _describe(data: DictConfig, updated: list[str]) -> None:
    path = describe(data, this_command("convert"))
    print((f"updated {path} ({'; '.join(updated)})" if updated else f"described {data.name} in {path}")
          + f": from now on data={data.name} stands for these settings, e.g. `python -m segframe.train data={data.name}`")


def _browse(cfg: DictConfig, run_dir: Path) -> int:
    data = cfg.data
    manifest = read_manifest(data.shard_dir, convert_command(data))
    split = cfg.browse_split or data.get("val_split")
    if not cfg.browse_split and any(n not in manifest["splits"] for n in str(split).split("+")):
        split = sorted(manifest["splits"])[0]  # converted into folds (data.num_folds) without data.fold: fold0
    out = Path(cfg.browse_file) if cfg.browse_file else run_dir / f"browse-{data.name}-{split}.png"
    for path in browse(data.shard_dir, split, int(cfg.browse_count), out, task=data.get("task")):
        print(f"wrote {path}")
    return 0
