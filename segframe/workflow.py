"""What the train and eval entry points do: train (fit -> evaluate best -> report), evaluate.

With conversion.py (convert), the one place that reads the composed config; every component
below it is built from its own config node (`_target_` + plain arguments).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from segframe.config import ConfigError, check_keys, plain
from segframe.conversion import check_labelled, convert_command, ensure_converted
from segframe.data.remote import locate
from segframe.data.shards import MANIFEST, split_info
from segframe.models.summary import gflops, parameter_count

log = logging.getLogger("segframe")


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
    check_labelled(cfg.data, ensure_converted(cfg.data), cfg.datamodule.train_split)
    dm = _datamodule(cfg.data, cfg.datamodule, instantiate(cfg.augmentation.train),
                     instantiate(cfg.augmentation.eval))
    module = SegModule(
        model=instantiate(cfg.model), optimizer=instantiate(cfg.optimizer),
        loss=instantiate(cfg.loss) if cfg.get("loss") else None,  # conf/loss: a factory, None: cross entropy
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
    # this session's steps only: a resumed run's earlier steps took their time in another process
    images = (trainer.global_step - (resume.step if resume else 0)) * trainer.accumulate_grad_batches \
        * int(cfg.datamodule.batch_size) * trainer.world_size
    metrics = _write(run_dir, module, dm, cfg.eval.split, best, examples, cfg,
                     extra={"fit_seconds": round(fit_seconds, 1), "epochs": trainer.current_epoch,
                            "steps": trainer.global_step, "resumed_from": str(resume.path) if resume else None,
                            "train_images_per_s": round(images / max(fit_seconds, 1e-9), 2),
                            **model_size(module.model, cfg.data.crop_size)})
    return float(metrics["miou"] or 0.0)


def model_size(model: Any, crop_size: Any) -> dict[str, Any]:
    """Parameters and GFLOPs of one forward pass at the training crop, for metrics.json."""
    h, w = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    return {"model_parameters": parameter_count(model), "model_trainable_parameters": parameter_count(model, True),
            "model_gflops": round(gflops(model, int(h), int(w)), 3), "model_gflops_at": [int(h), int(w)],
            "model_output_stride": getattr(model, "output_stride", None)}


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
    metrics = write_report(run_dir, module.last_confmat["test"], dm.classes, dm.palette, info, examples,
                           image_result=module.last_image_scores.get("test"))
    print(f"\n{info['dataset']} {split} ({info['num_samples']} images):\n" + (run_dir / "per_class.md").read_text())
    log.info("%s %s: mIoU %.2f  mDice %.2f  mean acc %.2f  pixel acc %.2f  fwIoU %.2f  | per image: mIoU %.2f  "
             "mDice %.2f  (report in %s)", info["dataset"], split,
             *(100 * (metrics[k] or 0) for k in ("miou", "mdice", "mean_acc", "pixel_acc", "fwiou", "miou_img",
                                                  "mdice_img")), run_dir)
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
                       palette=hp["palette"], model_config=model_cfg, inference=inference,
                       # the trained loss, as trained, for the val/test loss (older checkpoints: mean CE)
                       loss_config=hp.get("loss_config"), loss_reduction=hp.get("loss_reduction", "mean"),
                       class_weighting=hp.get("class_weighting", "none"), class_pixels=hp.get("class_pixels"))
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
