"""What `python -m segframe.eval` does: a checkpoint's metrics on a split, with the same report as
training. The model, classes and (without `data=`) the dataset come from the checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segframe.core.config import check_keys
from segframe.core.errors import CheckpointError, ConfigError
from segframe.data.augment import identity
from segframe.data.manifest import split_info
from segframe.engine import components
from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint, trained_data
from segframe.evaluation.report import finish_run, predict_examples


def evaluate(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Metrics of the checkpoint `cfg.ckpt` on `eval.split` (default: the dataset's val split)."""
    check_keys(cfg, "eval")
    ckpt = load_checkpoint(cfg.ckpt, command="eval")
    hp = ckpt["hyper_parameters"]
    if not cfg.get("data") and trained_data(ckpt) is None:
        raise CheckpointError(f"checkpoint {cfg.ckpt} does not record the dataset it was trained on; name it: "
                              f"python -m segframe.eval ckpt={cfg.ckpt} data=NAME")
    data = cfg.data if cfg.get("data") else OmegaConf.create(trained_data(ckpt))
    split = cfg.eval.split or data.val_split
    if not cfg.eval.split:
        check_unseen(cfg.ckpt, trained_data(ckpt), data, split)
    module = module_from_checkpoint(ckpt, components.inference_options(cfg.eval))
    dm = components.datamodule(data, cfg.datamodule, None, identity(), shard_dir=data.shard_dir, test_split=split,
                               val_split=split)
    if dm.num_classes != len(hp["classes"]):
        task = (trained_data(ckpt) or {}).get("task")
        raise CheckpointError(f"checkpoint {cfg.ckpt} predicts {len(hp['classes'])} classes {hp['classes']} but "
                              f"dataset {data.name} has {dm.num_classes} {dm.classes}; evaluate it on the dataset it "
                              f"was trained for" + (f" (data.task={task})" if task else ""))
    knobs = components.eval_speed_choice(cfg.trainer, ckpt, bool(module.channels_last))
    trainer = components.trainer(cfg.trainer, run_dir, [], False, precision=knobs.precision)
    trainer.test(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return {}
    examples = predict_examples(module, dm.eval_dataloader(split), cfg.report.num_images) \
        if cfg.report.num_images > 0 else None
    info = {"dataset": dm.manifest["name"], "split": split, "checkpoint": str(cfg.ckpt),
            "num_samples": split_info(dm.manifest, split, dm.shard_dir)["num_samples"], "inference": module.inference,
            "speed_knobs": knobs.record()}
    return finish_run(run_dir, cfg, module.last_confmat["test"], module.last_image_scores.get("test"), dm.classes,
                      dm.palette, info, examples)


def check_unseen(ckpt: str, trained: dict[str, Any] | None, data: DictConfig, split: str) -> None:
    """Refuse a default evaluation split that holds splits the checkpoint trained on: a dataset given
    with data= takes its own data.fold (EndoVis 2017's default is fold 0), which for a checkpoint of
    another fold would score it on its own training images. An explicit eval.split is left alone."""
    if not trained or trained.get("name") != data.get("name"):
        return
    seen = set(str(trained.get("train_split", "train")).split("+")) & set(str(split).split("+"))
    if seen:
        fold = trained.get("fold")
        fix = f"pass data.fold={fold}, the fold it was trained on" if fold is not None else \
            "pass eval.split=SPLIT to score it there anyway"
        raise ConfigError(f"checkpoint {ckpt} was trained on {sorted(seen)}, which the evaluation split {split!r} "
                          f"holds: its scores would be on training images; {fix}")
