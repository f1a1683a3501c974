"""The run's components, each built from its own config node (`_target_` + plain arguments): the
datamodule over the converted dataset, the Lightning trainer and its extra callbacks, and the
test-time inference options. Shared by training.py and evaluating.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import LearningRateMonitor

from segframe.core.commands import convert_command
from segframe.core.config import ConfigError, plain
from segframe.data.manifest import MANIFEST
from segframe.data.remote import locate
from segframe.engine import progress_bar, speed
from segframe.evaluation import crf
from segframe.models.summary import gflops, parameter_count

INFERENCE_KEYS = ("scales", "flip", "mode", "crop", "stride", "crf", *crf.DEFAULTS)  # segframe.evaluation.inference.infer's


def datamodule(data: DictConfig, dm_cfg: DictConfig, train_transform: Any, eval_transform: Any,
               **overrides: Any) -> Any:
    """The datamodule of `data`'s shards, refused when the shards hold another number of classes."""
    dm = instantiate(dm_cfg, train_transform=train_transform, eval_transform=eval_transform,
                     convert_hint=convert_command(data), task=data.get("task"), **overrides)
    if dm.num_classes != int(data.num_classes):
        raise ConfigError(
            f"{locate(data.shard_dir, MANIFEST)} has {dm.num_classes} classes {dm.classes} but data.num_classes="
            f"{data.num_classes} in the config; reconvert with `{convert_command(data)} overwrite=true` or fix the config"
        )
    return dm


def speed_choice(trainer_cfg: DictConfig, channels_last: Any = False) -> speed.Choice:
    """trainer.precision and module.channels_last with `auto` resolved for the device the trainer
    will use (segframe.engine.speed); an explicit value wins."""
    return speed.resolve(trainer_cfg.precision, channels_last, speed.device_type(trainer_cfg.get("accelerator")))


def eval_speed_choice(trainer_cfg: DictConfig, ckpt: dict[str, Any], channels_last: bool) -> speed.Choice:
    """At trainer.precision=auto, evaluate in the precision the checkpoint trained in, so that its
    metrics reproduce the training run's; a checkpoint from before `auto` trained in what its run
    config names. An explicit precision wins."""
    if trainer_cfg.precision == speed.AUTO:
        trained = (ckpt.get("speed_knobs") or {}).get("precision") or \
            ((ckpt.get("run_config") or {}).get("trainer") or {}).get("precision")
        if trained and trained != speed.AUTO:
            return speed.Choice(str(trained), channels_last, "auto: the precision the checkpoint was trained in")
    return speed_choice(trainer_cfg, channels_last)


def trainer(trainer_cfg: DictConfig, run_dir: Path, callbacks: list, loggers: list | bool,
            plugins: list | None = None, precision: str | None = None) -> Any:
    """The Lightning Trainer of `trainer_cfg`, at `precision` when given (the run's speed choice),
    else at the config's, with `auto` resolved; its progress a line per epoch where stdout is not a
    terminal (segframe.engine.progress_bar), Lightning's bar where it is."""
    precision = precision or speed_choice(trainer_cfg).precision
    callbacks = [*callbacks, *progress_bar.for_console(trainer_cfg.get("enable_progress_bar", True), callbacks)]
    return instantiate(trainer_cfg, callbacks=callbacks, logger=loggers, default_root_dir=str(run_dir),
                       precision=precision, **({"plugins": plugins} if plugins else {}))


def callbacks(callbacks_cfg: DictConfig | None, logging: bool) -> list[Any]:
    """The `callbacks` config node's Lightning callbacks (a null entry removes one). Without a
    logger the ones that only log (LearningRateMonitor) are left out: Lightning refuses them."""
    built = [instantiate(c) for c in (callbacks_cfg or {}).values() if c is not None]
    return [c for c in built if logging or not isinstance(c, LearningRateMonitor)]


def inference_options(eval_cfg: DictConfig) -> dict[str, Any]:
    """The test-time inference keys of an `eval` node, as plain values for SegModule."""
    values = plain(eval_cfg)
    return {k: values[k] for k in INFERENCE_KEYS if k in values}


def model_size(model: Any, crop_size: Any) -> dict[str, Any]:
    """Parameters and GFLOPs of one forward pass at the training crop, for metrics.json."""
    h, w = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    return {"model_parameters": parameter_count(model), "model_trainable_parameters": parameter_count(model, True),
            "model_gflops": round(gflops(model, int(h), int(w)), 3), "model_gflops_at": [int(h), int(w)],
            "model_output_stride": getattr(model, "output_stride", None)}
