"""One name for one concept across the model menu (issue 27): every family takes `model.backbone`, and
smp's word for it, `model.encoder`, is its other name (tests/test_eval_group.py: the other one-config item)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers.config import compose
from segframe.core.paths import CONF_DIR
from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint
from segframe.evaluation.model_card import render_card
from segframe.models.fcn import FCN
from segframe.models.smp import SmpModel

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
BEFORE_MOVE = Path(__file__).parent / "fixtures" / "before_move" / "unet_tiny.ckpt"


def _model(overrides: list[str]) -> dict:
    return OmegaConf.to_container(compose([*overrides, "model.pretrained=false"]).model, resolve=True)


@pytest.mark.parametrize("option", MODELS)
def test_every_model_takes_backbone_and_its_other_name_encoder(option):
    default = _model([f"model={option}"])["backbone"]
    assert default and _model([f"model={option}"])["encoder"] is None
    # the name the FCN reproductions and the tests use, and smp's: Hydra refuses neither on any family
    assert _model([f"model={option}", f"model.backbone={default}"])["backbone"] == default
    assert _model([f"model={option}", f"model.encoder={default}"])["backbone"] == default
    assert _model([f"model={option}", f"model.encoder={default}", f"model.backbone={default}"])["backbone"] == default


@pytest.mark.parametrize("overrides, family, name", [
    (["model=deeplabv3", "model.backbone=resnet50"], "SmpModel", "resnet50"),  # pasted after an FCN run
    (["model=unet", "model.backbone=resnet18"], "SmpModel", "resnet18"),
    (["model=fcn8s", "model.encoder=vgg16"], "FCN", "vgg16"),  # smp's word on an FCN
    (["model=fcn_dilated", "model.encoder=resnet18"], "DilatedFCN", "resnet18"),
    (["model=smp", "model.arch=FPN", "model.encoder=resnet18", "model.backbone=resnet18"], "SmpModel", "resnet18"),
])
def test_pasted_commands_compose_and_build(overrides, family, name):
    model = instantiate(compose([*overrides, "model.pretrained=false"]).model)
    assert type(model).__name__ == family and model.backbone_name == name


@pytest.mark.parametrize("option", ["unet", "fcn8s"])
def test_backbone_and_encoder_set_to_different_values_are_refused(option):
    cfg = compose([f"model={option}", "model.encoder=resnet18", "model.backbone=resnet34", "model.pretrained=false"])
    with pytest.raises(Exception, match=r"model.backbone='resnet34' and model.encoder='resnet18' disagree.*"
                                        r"give it once: model.backbone=resnet18"):
        instantiate(cfg.model)


def test_ternausnet_names_its_fixed_backbone_and_refuses_another():
    assert _model(["model=ternausnet16"])["backbone"] == "vgg16"
    with pytest.raises(Exception, match="model.backbone='resnet50'.*model=unet model.backbone=resnet50"):
        instantiate(compose(["model=ternausnet16", "model.encoder=resnet50", "model.pretrained=false"]).model)


def test_model_configs_of_either_name_rebuild():
    """Checkpoints hold the model config they were built from: smp ones written before the one name hold
    `encoder` only, FCN ones `backbone` only, new ones both keys."""
    old_smp = {"_target_": "segframe.models.smp.SmpModel", "num_classes": 3, "arch": "Unet", "encoder": "resnet18"}
    assert instantiate(old_smp).backbone_name == "resnet18"
    old_fcn = {"_target_": "segframe.models.fcn.FCN", "num_classes": 3, "stride": 8, "backbone": "resnet18"}
    assert instantiate(old_fcn).backbone_name == "resnet18"
    new = _model(["model=unet", "model.encoder=resnet18"])
    assert instantiate({**new, "num_classes": 3}).backbone_name == "resnet18"
    assert isinstance(FCN(3, 8, "resnet18"), FCN) and SmpModel(3, "Unet", "resnet18").backbone_name == "resnet18"


def test_an_smp_checkpoint_holding_encoder_only_still_loads():
    ckpt = load_checkpoint(str(BEFORE_MOVE))
    config = ckpt["hyper_parameters"]["model_config"]
    assert "encoder" in config and "backbone" not in config  # written before the one name
    model = module_from_checkpoint(ckpt, {"scales": [1.0], "flip": False, "mode": "whole"}).model
    assert model.backbone_name == config["encoder"]


@pytest.mark.parametrize("model", [{"_target_": "segframe.models.smp.SmpModel", "arch": "Unet", "encoder": "resnet18"},
                                   {"_target_": "segframe.models.smp.SmpModel", "arch": "Unet",
                                    "backbone": "resnet18", "encoder": None}])
def test_the_model_card_says_backbone(model):
    card = render_card({"dataset": "shapes", "classes": ["background", "circle"]}, {"model": model}, "", None,
                       {"device": "cpu", "device_count": 1, "torch": torch.__version__})
    assert "| backbone | resnet18 |" in card and "encoder" not in card.split("## Training recipe")[0]
