"""What `python -m segframe.train` does: fit (or continue a resumed run), evaluate the best
checkpoint on `eval.split`, write the report. Reads the composed config and hands every
component its own config node. With `evaluate_only=true` (the fcn*_voc_released experiments) it
fits nothing: it evaluates the weights of `model.init_from` as the model loaded them."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from segframe.core.config import ConfigError, check_keys, plain
from segframe.data.manifest import split_info
from segframe.data.preparation import check_labelled, ensure_converted
from segframe.engine import components, speed, trackers
from segframe.engine.checkpointing import EVALUATED, LAST, Requeued, RunClock, RunConfig, resumable
from segframe.engine.module import SegModule
from segframe.engine.resume import METRICS, continue_logs, find_resume, mid_epoch_resume
from segframe.evaluation.curves import write_curves
from segframe.evaluation.model_card import write_model_card
from segframe.evaluation.report import finish_run, predict_examples

log = logging.getLogger("segframe")


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Fit, evaluate the best checkpoint on `eval.split`, write the report. Returns its mIoU.
    With `resume=`, the run continues where its checkpoint left it, in that run's own directory."""
    check_keys(cfg, "train")
    if cfg.evaluate_only and (not cfg.model.get("init_from") or cfg.resume):
        raise ConfigError("evaluate_only=true evaluates the weights of model.init_from without training: pass "
                          "model.init_from=FILE (e.g. pytorch-fcn's fcn8s_from_caffe.pth), and no resume=")
    if cfg.get("parent_experiment") and not cfg.model.get("init_from"):
        raise ConfigError(
            f"this experiment is a stage after {cfg.parent_experiment!r}: pass model.init_from=<its checkpoint>, or "
            f"let `python -m segframe.reproduce experiment=<this experiment>` train the stages in order"
        )
    config = plain(cfg)
    resume = find_resume(cfg.resume, run_dir, config)
    if resume is not None and resume.finished:  # its metrics, card and checkpoints stay byte for byte
        return float(json.loads((resume.run_dir / METRICS).read_text()).get("miou") or 0.0)
    run_dir = resume.run_dir if resume is not None else run_dir
    loggers = trackers.build(cfg.get("logger"), run_dir)  # before any work: a tracker's missing extra stops here
    knobs = components.speed_choice(cfg.trainer, cfg.module.channels_last)  # may probe: before seeding
    moved = speed.changed_since(resume.speed_knobs, knobs) if resume is not None else None
    if moved:
        log.warning("resuming: %s", moved)
    pl.seed_everything(cfg.seed, workers=True)
    check_labelled(cfg.data, ensure_converted(cfg.data), cfg.datamodule.train_split)
    dm = components.datamodule(cfg.data, cfg.datamodule, instantiate(cfg.augmentation.train),
                               instantiate(cfg.augmentation.eval))
    module = SegModule(
        model=instantiate(cfg.model), optimizer=instantiate(cfg.optimizer),
        loss=instantiate(cfg.loss) if cfg.get("loss") else None,  # conf/loss: a factory, None: cross entropy
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        classes=dm.classes, palette=dm.palette, **{**plain(cfg.module), "channels_last": knobs.channels_last},
        class_pixels=dm.class_pixels(dm.train_split),  # for class_weighting
        inference=components.inference_options(cfg.eval),
        model_config=plain(cfg.model), data_config=plain(cfg.data),
    )
    ckpt_dir = run_dir / "checkpoints"
    best_cb, callbacks, plugins = resumable(ckpt_dir, cfg.seed, **plain(cfg.checkpoint))
    if resume is not None:
        continue_logs(loggers, resume)  # the same CSV and TensorBoard logs, the same tracker runs
    trackers.begin(loggers, run_dir, config)
    with trackers.failing(loggers):  # an error from here on ends the tracker runs as failed
        clock = RunClock(cfg.datamodule.batch_size, start_step=resume.step if resume else 0)
        callbacks += [RunConfig(config, knobs.record()), clock,
                      *components.callbacks(cfg.get("callbacks"), logging=bool(loggers))]
        trainer = components.trainer(cfg.trainer, run_dir, callbacks, loggers or False, plugins, knobs.precision)
        split = cfg.eval.split
        if cfg.evaluate_only:
            best, fit = str(ckpt_dir / EVALUATED), {"fit_seconds": 0.0, "fit_seconds_per_process": [],
                                                    "fit_processes": 0, "train_images": 0}
            # the file and its digest before the evaluation: a warning about it comes first, not after it
            weights = evaluated_weights(cfg.model.init_from, (cfg.get("reference") or {}).get("weights_md5"))
            start = time.time()
            log.info("evaluate_only: evaluating the weights of %s on split %s", weights["init_from"], split)
            trainer.test(module, datamodule=dm, verbose=False)
            eval_seconds = time.time() - start
            # the weights as evaluated, as a checkpoint eval, predict and export take (full: as last.ckpt is)
            trainer.save_checkpoint(best, weights_only=False)
        else:
            try:
                with mid_epoch_resume(resume):
                    trainer.fit(module, datamodule=dm, ckpt_path=str(resume.path) if resume else None,
                                weights_only=True)  # a checkpoint is data, never code
            except Requeued as exc:  # SLURM will start this same command again; resume=auto picks it up
                log.warning("%s; stopping here", exc)
                return float("nan")
            fit = clock.record()
            best = best_cb.best_model_path or str(ckpt_dir / LAST)
            log.info("evaluating %s on split %s", best, split)
            trainer.test(module, datamodule=dm, ckpt_path=best, verbose=False, weights_only=True)
        if not trainer.is_global_zero:
            return float("nan")
        examples = predict_examples(module, dm.eval_dataloader(split), cfg.report.num_images) \
            if cfg.report.num_images > 0 else None
        # `fit`: the whole run's, over its processes (RunClock): a resumed process adds its own to what its
        # checkpoint carried, and steps that a killed process lost and the next one trained again count once
        info = {"dataset": dm.manifest["name"], "split": split, "checkpoint": str(best),
                "num_samples": split_info(dm.manifest, split, dm.shard_dir)["num_samples"],
                "inference": module.inference,
                **fit, "epochs": trainer.current_epoch, "steps": trainer.global_step,
                "resumed_from": str(resume.path) if resume else None,
                "train_images_per_s": round(fit["train_images"] / max(fit["fit_seconds"], 1e-9), 2),
                "speed_knobs": knobs.record(), **components.model_size(module.model, cfg.data.crop_size)}
        if cfg.evaluate_only:
            info.update(weights, eval_seconds=round(eval_seconds, 1),
                        eval_seconds_per_image=round(eval_seconds / max(info["num_samples"], 1), 3))
        metrics = finish_run(run_dir, cfg, module.last_confmat["test"], module.last_image_scores.get("test"),
                             dm.classes, dm.palette, info, examples)
        if not cfg.evaluate_only:  # the card describes a training run: its recipe, time and data
            write_model_card(run_dir, config, metrics, dm.manifest, dm.train_split, trainer.strategy.root_device.type,
                             trainer.world_size)
        write_curves(run_dir)  # curves.png from the CSV log (of the whole run, when resumed); the trackers upload it
        trackers.finish(loggers, run_dir, metrics, best)  # the final metrics and the report files, once all are written
        return float(metrics["miou"] or 0.0)


def evaluated_weights(path: str, expected_md5: str | None) -> dict[str, str]:
    """The weights file an evaluate-only run judged, by path and md5 (the digest pytorch-fcn publishes
    for its downloads); a warning when the experiment names another digest."""
    path = str(Path(path).expanduser())
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    md5 = digest.hexdigest()
    if expected_md5 and md5 != expected_md5:
        log.warning("evaluate_only: %s has md5 %s, not the released file's %s (reference.weights_md5): the verdict "
                    "judges these weights, not the release (reproduce does not record it)", path, md5, expected_md5)
    return {"init_from": path, "init_from_md5": md5}
