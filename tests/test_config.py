"""Every config group option and every experiment composes; unknown keys are rejected."""

from __future__ import annotations


import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segframe.core.paths import CONF_DIR, EXPERIMENTS_DIR
from segframe.core.config import ConfigError, check_keys

from helpers.cli import run_cli
from helpers.config import compose

GROUPS = ["data", "model", "optimizer", "scheduler", "augmentation", "trainer", "logger"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# options with mandatory values (`???`) the user must give
REQUIRED = {("data", "folder"): ["data.classes=[background,cell]"]}


@pytest.mark.parametrize("group, option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    cfg = compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    OmegaConf.to_container(cfg, resolve=True)
    check_keys(cfg, "train")


def test_components_instantiate_from_their_nodes():
    cfg = compose(["model.backbone=resnet18", "model.pretrained=false"])
    for aug in _options("augmentation"):
        c = compose([f"augmentation={aug}"])
        instantiate(c.augmentation.train)
        instantiate(c.augmentation.eval)
    opt = instantiate(cfg.optimizer)
    import torch

    optimizer = opt([torch.nn.Parameter(torch.zeros(1))])
    for sched in _options("scheduler"):
        # poly and warmup_poly get total_iters from the trainer at run time
        instantiate(compose([f"scheduler={sched}"]).scheduler)(optimizer, **({"total_iters": 100} if sched.endswith("poly") else {}))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.yaml")))
def test_every_experiment_composes(experiment):
    cfg = compose([f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True)
    check_keys(cfg, "train")
    assert cfg.reference is not None, f"experiments/{experiment}.yaml must record the numbers it reproduces"


def test_eval_and_convert_configs_compose():
    OmegaConf.to_container(compose(["ckpt=x.ckpt"], "eval"), resolve=True)
    OmegaConf.to_container(compose(["ckpt=x.ckpt", "data=shapes"], "eval"), resolve=True)
    check_keys(compose([], "convert"), "convert")
    predict = compose(["ckpt=x.ckpt", "input=photos/", "eval.flip=true"], "predict")
    OmegaConf.to_container(predict, resolve=True)
    check_keys(predict, "predict")


def test_added_unknown_top_level_key_is_rejected():
    cfg = compose(["+lerning_rate=0.1"])
    with pytest.raises(ConfigError, match="lerning_rate"):
        check_keys(cfg, "train")


def test_cli_rejects_unknown_keys_with_a_clear_message(tmp_path):
    res = run_cli("train", "optimiser.lr=0.1", f"hydra.run.dir={tmp_path}")
    assert res.returncode != 0
    assert "optimiser" in res.stderr
    res = run_cli("train", "+trainer.max_epoch=2", "model.pretrained=false", "model.backbone=resnet18",
                  f"paths.data_dir={tmp_path}", "data.source.num_train=4", "data.source.num_val=2",
                  f"hydra.run.dir={tmp_path}/run")
    assert res.returncode != 0
    assert "max_epoch" in res.stderr
