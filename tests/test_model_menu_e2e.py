"""The model menu end to end on tiny `shapes`, through the real CLIs, one family at a time:
train, then eval from the checkpoint alone, then predict on odd-size images.

Every family is marked slow (`pytest -m slow`, CI runs them): three CLI processes each.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.cli import ok as _ok, run_cli
from helpers.config import only, tiny

# TINY (its `model.backbone=resnet18` is every family's: one name across the menu), one epoch
TINY = tiny("report.num_images=2", "trainer.max_epochs=1")
DATA = only(TINY, "data.source", "data.shard_size")  # what the dataset is converted with
SMP = "segframe.models.smp.SmpModel"

# id: (model=..., overrides, expected model_config entries)
FAMILIES = {
    "unet-resnet18": ("unet", [], {"_target_": SMP, "arch": "Unet", "backbone": "resnet18"}),
    "fcn_dilated-resnet18-os16": ("fcn_dilated", ["model.output_stride=16"],
                                  {"_target_": "segframe.models.dilated.DilatedFCN", "backbone": "resnet18",
                                   "output_stride": 16}),
    "deeplabv3-resnet18-os16": ("deeplabv3", ["model.output_stride=16"],
                                {"_target_": SMP, "arch": "DeepLabV3", "backbone": "resnet18", "output_stride": 16}),
    "deeplabv3plus-resnet18": ("deeplabv3plus", [],
                               {"_target_": SMP, "arch": "DeepLabV3Plus", "backbone": "resnet18"}),
    "smp-fpn-resnet18": ("smp", ["model.arch=FPN"], {"_target_": SMP, "arch": "FPN", "backbone": "resnet18"}),
    # smp's own name for the backbone, `encoder`, is taken too (here with TINY's model.backbone dropped)
    "smp-fpn-tu-resnet18": ("smp", ["model.arch=FPN", "model.encoder=tu-resnet18"],
                            {"_target_": SMP, "arch": "FPN", "backbone": "tu-resnet18", "encoder": "tu-resnet18"}),
}
DEFAULT: set[str] = set()  # all slow: each family costs ~25 s of CLI start-up and training (CI runs them)
PREDICT_SIZES = [(50, 37), (37, 50)]  # (W, H): odd, not multiples of any stride, and not the training size


@pytest.fixture(scope="module")
def menu_data(tmp_path_factory) -> tuple[Path, Path]:
    """Shapes converted once (by the convert CLI, with the settings TINY trains on) and a folder of
    odd-size PNG images for predict, shared by every family."""
    from PIL import Image

    from segframe.data.sources.shapes import ShapesSource

    root = tmp_path_factory.mktemp("menu")
    data = root / "data"
    _ok(run_cli("convert", *DATA, f"paths.data_dir={data}", "num_workers=0", f"hydra.run.dir={root / 'convert'}"))
    assert (data / "shapes" / "manifest.json").is_file()
    images = root / "images"
    images.mkdir()
    source = ShapesSource(size=64, seed=1)
    for i, (w, h) in enumerate(PREDICT_SIZES):
        Image.fromarray(source.generate("val", i)[0][:h, :w]).save(images / f"img{i}.png")
    return data, images


@pytest.mark.parametrize("family", [pytest.param(name, marks=() if name in DEFAULT else pytest.mark.slow)
                                    for name in FAMILIES])
def test_train_eval_predict(family, menu_data, tmp_path):
    from PIL import Image

    data, images = menu_data
    model, overrides, expected = FAMILIES[family]
    run = tmp_path / "run"
    base = tiny(base=TINY, drop=["model.backbone"]) if "model.encoder" in " ".join(overrides) else TINY
    _ok(run_cli("train", f"model={model}", *base, *overrides, f"paths.data_dir={data}", f"hydra.run.dir={run}"))

    # the checkpoint carries the family's model config
    ckpts = run / "checkpoints"
    best = next(ckpts.glob("best-epoch*.ckpt"))
    assert (ckpts / "last.ckpt").is_file()
    hp = torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert {k: hp["model_config"][k] for k in expected} == expected
    assert hp["model_config"]["pretrained"] is False

    train_m = json.loads((run / "metrics.json").read_text())
    assert train_m["split"] == "val" and train_m["num_samples"] == 6
    assert sum(map(sum, train_m["confusion_matrix"])) == 6 * 48 * 48
    assert Path(train_m["checkpoint"]).name == best.name

    # eval from the checkpoint alone (no model or data overrides): same checkpoint, same split, same numbers
    out = tmp_path / "eval"
    _ok(run_cli("eval", f"ckpt={best}", f"hydra.run.dir={out}", "datamodule.num_workers=0"))
    eval_m = json.loads((out / "metrics.json").read_text())
    for key in ("miou", "mdice"):
        assert 0.0 <= train_m[key] <= 1.0
        assert eval_m[key] == train_m[key], key
    assert eval_m["confusion_matrix"] == train_m["confusion_matrix"]

    # predict: one class-index mask per input, at the input's size
    pred = tmp_path / "pred"
    res = run_cli("predict", f"ckpt={best}", f"input={images}", f"output={pred}",
                  f"hydra.run.dir={tmp_path / 'predict-run'}")
    _ok(res)
    assert f"wrote {len(PREDICT_SIZES)} prediction(s)" in res.stdout and "skipped" not in res.stdout
    assert sorted(p.name for p in pred.glob("*_mask.png")) == [f"img{i}_mask.png" for i in range(len(PREDICT_SIZES))]
    for i, size in enumerate(PREDICT_SIZES):
        with Image.open(pred / f"img{i}_mask.png") as mask:
            assert mask.mode == "P" and mask.size == size
            assert set(np.unique(np.asarray(mask)).tolist()) <= set(range(6))
        with Image.open(pred / f"img{i}_overlay.png") as overlay:
            assert overlay.size == size
