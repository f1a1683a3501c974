"""What the entry points do: convert, train (fit -> evaluate best -> report), evaluate.

This is the one place that reads the composed config; every component below it is
built from its own config node (`_target_` + plain arguments).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segframe.data.remote import is_remote, locate, refuse_write
from segframe.data.shards import (MANIFEST, ConversionInProgress, ManifestError, read_manifest, split_info, verify,
                                  wait_for_conversion, write_dataset)
from segframe.paths import CONF_DIR

log = logging.getLogger("segframe")


class ConfigError(ValueError):
    """A config the user composed that cannot work."""


def plain(cfg: DictConfig) -> Any:
    """Resolved plain containers: what checkpoints and JSON may hold (never OmegaConf objects)."""
    return OmegaConf.to_container(cfg, resolve=True)


def check_keys(cfg: DictConfig, primary: str) -> None:
    """Reject top-level keys the primary config does not define (`+typo=1` bypasses struct mode)."""
    base = OmegaConf.load(CONF_DIR / f"{primary}.yaml")
    known = {k for k in base if k not in ("defaults", "hydra")}
    for entry in base.get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            known.update(str(k).lstrip("+~").split("@")[0] for k in entry)
    unknown = sorted(set(cfg) - known - {"hydra"})
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for `python -m segframe.{primary}`; known top-level keys: "
            f"{sorted(known)}. Check the spelling; `--cfg job` prints the composed config."
        )


def convert_command(data: DictConfig) -> str:
    """The convert command for `data` as composed now: its config file, and the dataset name when
    that differs (`data=folder data.name=cells`)."""
    from hydra.core.hydra_config import HydraConfig

    choice = HydraConfig.get().runtime.choices.get("data") if HydraConfig.initialized() else None
    choice = choice or data.name
    return f"python -m segframe.convert data={choice}" + (f" data.name={data.name}" if choice != data.name else "")


# --------------------------------------------------------------------------- convert


def convert_dataset(data: DictConfig, num_workers: int = 0, on_bad: str = "error", source: Any = None) -> dict[str, Any]:
    from segframe.data.sources.files import bit_palette

    source = source if source is not None else instantiate(data.source)
    classes = list(data.classes)
    palette = [list(c) for c in data.palette] if data.get("palette") else bit_palette(len(classes))
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
    source = instantiate(data.source)
    if (Path(data.shard_dir) / MANIFEST).is_file() and not cfg.overwrite:
        try:
            manifest = read_manifest(data.shard_dir)
        except ManifestError as exc:
            print(f"existing conversion is unusable ({exc}); converting again")
        else:
            counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
            print(f"{data.name} is already converted at {data.shard_dir} {counts}; pass overwrite=true to redo it")
            for line in _stale(manifest, data, source):
                print(f"  but {line}: pass overwrite=true to convert it again")
            return 0
    start = time.time()
    manifest = convert_dataset(data, num_workers=cfg.num_workers, on_bad=cfg.on_bad, source=source)
    counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
    print(f"converted {data.name} -> {data.shard_dir} {counts} in {time.time() - start:.1f}s"
          + (f"; skipped {len(manifest['skipped'])} bad sample(s), listed in the manifest" if manifest["skipped"] else ""))
    print(f"look at it: {convert_command(data)} browse=true")
    return 0


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
    differ = {k: (recorded[k], wanted[k]) for k in wanted if k in recorded and not k.endswith(("root", "dir"))
              and json.dumps(recorded[k], sort_keys=True) != json.dumps(wanted[k], sort_keys=True)}
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


# --------------------------------------------------------------------------- train


def _datamodule(data: DictConfig, dm_cfg: DictConfig, train_transform: Any, eval_transform: Any,
                **overrides: Any) -> Any:
    dm = instantiate(dm_cfg, train_transform=train_transform, eval_transform=eval_transform,
                     convert_hint=convert_command(data), **overrides)
    if dm.num_classes != int(data.num_classes):
        raise ConfigError(
            f"{locate(data.shard_dir, MANIFEST)} has {dm.num_classes} classes {dm.classes} but data.num_classes="
            f"{data.num_classes} in the config; reconvert with `{convert_command(data)} overwrite=true` or fix the config"
        )
    return dm


def _trainer(trainer_cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list | bool,
             plugins: list | None = None) -> Any:
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir),
                       **({"plugins": plugins} if plugins else {}))


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Fit, evaluate the best checkpoint on `eval.split`, write the report. Returns its mIoU.
    With `resume=`, the run continues where its checkpoint left it, in that run's own directory."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor

    from segframe.module import SegModule
    from segframe.checkpointing import LAST, Requeued, resumable
    from segframe.resume import continue_logs, find_resume

    check_keys(cfg, "train")
    if cfg.get("parent_experiment") and not cfg.model.get("init_from"):
        raise ConfigError(
            f"this experiment is a stage after {cfg.parent_experiment!r}: pass model.init_from=<its checkpoint>, or "
            f"let `python -m segframe.reproduce experiment=<this experiment>` train the stages in order"
        )
    resume = find_resume(cfg.resume, run_dir, plain(cfg))
    run_dir = resume.run_dir if resume is not None else run_dir
    pl.seed_everything(cfg.seed, workers=True)
    ensure_converted(cfg.data)
    dm = _datamodule(cfg.data, cfg.datamodule, instantiate(cfg.augmentation.train),
                     instantiate(cfg.augmentation.eval))
    module = SegModule(
        model=instantiate(cfg.model), optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        classes=dm.classes, palette=dm.palette, **plain(cfg.module),
        class_pixels=split_info(dm.manifest, dm.train_split, dm.shard_dir)["class_pixels"],  # for class_weighting
        inference=inference_options(cfg.eval),
        model_config=plain(cfg.model), config=plain(cfg),
    )
    ckpt_dir = run_dir / "checkpoints"
    best_cb, callbacks, plugins = resumable(ckpt_dir, cfg.seed, **plain(cfg.checkpoint))
    loggers = [instantiate(c, save_dir=str(run_dir)) for c in cfg.logger.values()]
    if resume is not None:
        continue_logs(loggers, resume)
    callbacks += [LearningRateMonitor(logging_interval="step")] if loggers else []
    trainer = _trainer(cfg.trainer, run_dir, callbacks, loggers or False, plugins)
    start = time.time()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume.path) if resume else None)
    except Requeued as exc:  # SLURM will start this same command again; resume=auto picks it up
        log.warning("%s; stopping here", exc)
        return float("nan")
    fit_seconds = time.time() - start
    best = best_cb.best_model_path or str(ckpt_dir / LAST)
    log.info("evaluating %s on split %s", best, cfg.eval.split)
    trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False)
    if not trainer.is_global_zero:
        return float("nan")
    examples = _examples(module, dm, cfg.eval.split, cfg.report.num_images)
    metrics = _write(run_dir, module, dm, cfg.eval.split, best, examples, cfg,
                     extra={"fit_seconds": round(fit_seconds, 1), "epochs": trainer.current_epoch,
                            "steps": trainer.global_step, "resumed_from": str(resume.path) if resume else None})
    return float(metrics["miou"] or 0.0)


def inference_options(eval_cfg: DictConfig) -> dict[str, Any]:
    """The test-time inference keys of an `eval` node, as plain values for SegModule."""
    return {k: plain(eval_cfg)[k] for k in ("scales", "flip", "mode", "crop", "stride") if k in eval_cfg}


def _examples(module: Any, dm: Any, split: str, count: int) -> Any:
    from segframe.report import predict_examples

    return predict_examples(module, dm.eval_dataloader(split), count) if count > 0 else None


def _write(run_dir: Path, module: Any, dm: Any, split: str, ckpt: str, examples: Any, cfg: DictConfig,
           extra: dict[str, Any]) -> dict[str, Any]:
    from segframe.report import write_report

    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    info = {"dataset": dm.manifest["name"], "split": split, "checkpoint": str(ckpt),
            "num_samples": dm.manifest["splits"][split]["num_samples"], "inference": module.inference, **extra}
    metrics = write_report(run_dir, module.last_confmat["test"], dm.classes, dm.palette, info, examples)
    print(f"\n{info['dataset']} {split} ({info['num_samples']} images):\n" + (run_dir / "per_class.md").read_text())
    log.info("%s %s: mIoU %.2f  mean acc %.2f  pixel acc %.2f  fwIoU %.2f  (report in %s)", info["dataset"], split,
             *(100 * (metrics[k] or 0) for k in ("miou", "mean_acc", "pixel_acc", "fwiou")), run_dir)
    return metrics


# --------------------------------------------------------------------------- evaluate


def load_checkpoint(path: str) -> dict[str, Any]:
    """A Lightning checkpoint written by `segframe.train`, loaded without unpickling code."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (ckpt=PATH, e.g. outputs/DATE/TIME/checkpoints/last.ckpt)")
    try:  # weights_only: a checkpoint is data, never code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled objects, not a torch file...
        raise ValueError(f"{path} cannot be loaded as a segframe checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "model_config" not in ckpt["hyper_parameters"]:
        raise ValueError(f"{path} is not a segframe checkpoint (no hyper_parameters.model_config)")
    return ckpt


def module_from_checkpoint(ckpt: dict[str, Any], inference: dict[str, Any]) -> Any:
    """The trained SegModule of a loaded checkpoint: model, classes, palette and normalisation
    all come from the checkpoint itself."""
    from segframe.module import SegModule

    hp = ckpt["hyper_parameters"]
    model_cfg = {**hp["model_config"], "pretrained": False, "init_from": None}  # weights come from the checkpoint
    module = SegModule(model=instantiate(model_cfg), optimizer=None, scheduler=None, classes=hp["classes"],
                       palette=hp["palette"], model_config=model_cfg, inference=inference)
    module.load_state_dict(ckpt["state_dict"])
    return module


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Metrics of a checkpoint on a split, with the same report as training."""
    from segframe.data.augment import identity

    check_keys(cfg, "eval")
    ckpt = load_checkpoint(cfg.ckpt)
    hp = ckpt["hyper_parameters"]
    data = cfg.data if cfg.get("data") else OmegaConf.create(hp["config"]["data"])
    split = cfg.split or data.val_split
    module = module_from_checkpoint(ckpt, inference_options(cfg.eval))
    dm = _datamodule(data, cfg.datamodule, None, identity(), shard_dir=data.shard_dir, test_split=split,
                     val_split=split)
    if dm.num_classes != len(hp["classes"]):
        raise ConfigError(f"checkpoint {cfg.ckpt} predicts {len(hp['classes'])} classes {hp['classes']} but dataset "
                          f"{data.name} has {dm.num_classes} {dm.classes}; evaluate it on the dataset it was trained for")
    trainer = _trainer(cfg.trainer, run_dir, [], False)
    trainer.test(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return {}
    examples = _examples(module, dm, split, cfg.report.num_images)
    return _write(run_dir, module, dm, split, cfg.ckpt, examples, cfg, extra={})
