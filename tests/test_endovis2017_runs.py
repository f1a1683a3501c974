"""EndoVis 2017 as a user meets it: `data=endovis2017` composes for every task and fold, the recipes
carry TernausNet's parameters, and (slow) one conversion of full-HD frames serves convert -> train ->
eval -> predict for each of the three tasks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segframe.data.shards import read_manifest
from segframe.data.sources import endovis2017
from segframe.core.errors import ConfigError
from segframe.engine.evaluating import check_unseen

from helpers.cli import ok, run_cli
from helpers.config import compose, tiny
from helpers.endovis2017 import make_endovis2017

RECIPES = ("endovis17_binary_ternausnet16", "endovis17_parts_ternausnet16", "endovis17_instruments_ternausnet16")


def test_the_config_names_the_converters_tasks_and_folds():
    for task, entry in endovis2017.TASKS.items():
        data = compose(["data=endovis2017", f"data.task={task}"]).data
        assert list(data.classes) == entry["classes"] and data.num_classes == len(entry["classes"])
    folds = compose(["data=endovis2017"]).data.folds
    assert [list(f) for f in folds] == [[f"instrument_dataset_{n}" for n in fold] for fold in endovis2017.FOLDS]


def test_a_task_the_dataset_lacks_is_named_with_the_ones_it_has():
    for wrong in ("data.task=part", "data.task=null"):
        with pytest.raises(Exception, match=r"endovis2017 has the tasks binary, parts, instruments; pass one"):
            compose(["data=endovis2017", wrong]).data.classes


def test_eval_refuses_a_default_split_the_checkpoint_trained_on():
    trained = compose(["data=endovis2017", "data.fold=1"]).data  # validates on 2+5, trains on 1, 3, 4, 6, 7, 8
    given = compose(["data=endovis2017"]).data  # data= again: its default fold 0 validates on 1+3
    with pytest.raises(ConfigError, match=r"trained on \['instrument_dataset_1', 'instrument_dataset_3'\].*"
                                          r"pass data.fold=1, the fold it was trained on"):
        check_unseen("c.ckpt", dict(trained), given, given.val_split)
    check_unseen("c.ckpt", dict(trained), trained, trained.val_split)  # its own fold: fine


@pytest.mark.parametrize("fold", range(4))
def test_each_fold_validates_on_two_instrument_datasets_and_trains_on_six(fold):
    data = compose(["data=endovis2017", f"data.fold={fold}"]).data
    val = [f"instrument_dataset_{n}" for n in endovis2017.FOLDS[fold]]
    assert data.val_split == "+".join(val)
    train = data.train_split.split("+")
    assert len(train) == 6 and not set(train) & set(val)
    assert set(train) | set(val) == {f"instrument_dataset_{n}" for n in range(1, 9)}
    with pytest.raises(Exception, match=r"data.fold=4: endovis2017 has 4 folds, numbered 0 to 3"):
        compose(["data=endovis2017", "data.fold=4"]).data.train_split


@pytest.mark.parametrize("name", RECIPES)
def test_the_ternausnet_recipes_follow_its_readme_script(name):
    cfg = compose([f"experiment={name}"])
    task = name.split("_")[1]
    assert cfg.data.name == "endovis2017" and cfg.data.task == task and cfg.data.crop_frames
    assert cfg.model._target_.endswith("TernausNet16") and cfg.model.pretrained is True
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-4
    assert cfg.optimizer.weight_decay == 0.0
    # --lr 0.0001 --n-epochs 10, then --lr 0.00001 up to epoch 20, batch 16 over 1350 frames a fold
    assert cfg.datamodule.batch_size == 16 and cfg.trainer.max_epochs == 20
    assert list(cfg.scheduler.milestones) == [10 * (6 * 225 // 16)] and cfg.scheduler.gamma == 0.1
    assert cfg.loss.jaccard_weight == 1.0 and cfg.loss.classes == ("foreground" if task == "binary" else "all")
    assert cfg.augmentation.train.hflip == 0.5 and cfg.augmentation.train.vflip == 0.5
    assert cfg.checkpoint.monitor is None  # the last epoch is scored
    assert set(cfg.reference.mean) == {"jaccard_ternaus", "dice_ternaus"}


def test_the_seed_papers_network_is_not_judged_against_anything():
    cfg = compose(["experiment=endovis17_binary_resnet101_8s"])
    assert cfg.model.backbone == "resnet101" and cfg.model.output_stride == 8 and cfg.optimizer.lr == 1e-4
    assert not cfg.reference.get("mean") and not cfg.reference.get("minimum")
    assert cfg.reference.also[0].mean.jaccard_ternaus == 83.60


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, list[str]]:
    """The fixture converted once through the CLI: (work dir, the data overrides that find it)."""
    work = tmp_path_factory.mktemp("endovis2017")
    root = make_endovis2017(work / "raw" / "endovis2017")
    data = [f"data.root={root}", f"paths.data_dir={work / 'data'}"]
    res = run_cli("convert", "data=endovis2017", *data, "num_workers=0", f"hydra.run.dir={work / 'c'}", cwd=work)
    ok(res)
    return work, data


@pytest.mark.slow  # CLI runs on full-HD frames (>15 s each): CI runs them with the slow set
@pytest.mark.parametrize("task", list(endovis2017.TASKS))
def test_one_conversion_serves_every_task_through_train_eval_and_predict(converted, task):
    work, data = converted
    manifest = read_manifest(work / "data" / "endovis2017")
    assert sorted(manifest["splits"]) == [f"instrument_dataset_{n}" for n in range(1, 9)]
    assert manifest["tasks"][task]["classes"] == endovis2017.TASKS[task]["classes"] and not manifest["warnings"]
    run = work / f"train-{task}"
    overrides = tiny("data.crop_size=96", "trainer.max_steps=2", "trainer.max_epochs=1", "datamodule.batch_size=2",
                     "datamodule.eval_batch_size=1", "augmentation=default", "checkpoint.monitor=null",
                     drop=["data.source", "data.shard_size"])
    ok(run_cli("train", "data=endovis2017", f"data.task={task}", "data.fold=1", *data, *overrides,
               f"hydra.run.dir={run}", cwd=work))
    metrics = json.loads((run / "metrics.json").read_text())
    classes = endovis2017.TASKS[task]["classes"]
    # fold 1 validates on instrument datasets 2 and 5: 2 frames each, scored whole (1280x1024)
    assert metrics["split"] == "instrument_dataset_2+instrument_dataset_5" and metrics["num_samples"] == 4
    assert list(metrics["per_class"]) == classes
    assert 0.0 <= metrics["jaccard_ternaus"] <= 1.0 and 0.0 <= metrics["dice_ternaus"] <= 1.0
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))

    evaluated = work / f"eval-{task}"
    ok(run_cli("eval", f"ckpt={ckpt}", f"hydra.run.dir={evaluated}", cwd=work))  # the dataset and task from the ckpt
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["split"] == metrics["split"] and again["jaccard_ternaus"] == pytest.approx(metrics["jaccard_ternaus"])

    frames = work / "raw" / "endovis2017" / "test" / "instrument_dataset_1" / "left_frames"
    out = work / f"predict-{task}"
    ok(run_cli("predict", f"ckpt={ckpt}", f"input={frames}", f"output={out}", f"hydra.run.dir={work / 'p'}", cwd=work))
    masks = sorted(out.glob("*_mask.png"))
    assert len(masks) == len(list(frames.glob("*.png"))) > 0
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (1080, 1920) and int(mask.max()) < len(classes)  # the full test frame, the task's classes


def test_the_command_line_prints_a_resolvers_refusal_as_itself(tmp_path):
    res = run_cli("train", "data=endovis2017", "data.task=part", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.splitlines()[-2] == ("error: data.task='part': endovis2017 has the tasks binary, parts, "
                                           "instruments; pass one, e.g. data.task=binary")
