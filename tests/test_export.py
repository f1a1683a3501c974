"""`python -m segframe.export`: every model family as ONNX (and TorchScript) that takes images of any
size, parity against eager PyTorch, the sidecar, refusals, and predict from an exported graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.cli import ok, run_cli
from helpers.config import compose
from hydra.utils import instantiate
from PIL import Image

from segframe.deploy import exporting
from segframe.core.config import plain
from segframe.core.errors import ExportError, SegframeError
from segframe.deploy.exported import load_exported, read_sidecar, sidecar_path
from segframe.engine.module import SegModule

pytest.importorskip("onnxruntime")

OPTS = {"outputs": "logits", "input": "float", "opset": None, "exporter": "auto", "tolerance": 1e-4,
        "min_agreement": 0.9999}
SMP = ("deeplabv3", "deeplabv3plus", "unet", "smp")


def make_checkpoint(path: Path, family: str, **module_args) -> Path:
    """A segframe checkpoint of `family` (ResNet-18, no pretrained weights) written by hand: the
    zero-initialised score layers get small random weights so the logits differ between classes."""
    key = "encoder" if family in SMP else "backbone"
    cfg = compose([f"model={family}", f"model.{key}=resnet18", "model.pretrained=false"])
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().max() > 0:
                p.normal_(0, 0.01)
    n = int(cfg.data.num_classes)
    module = SegModule(model=model, optimizer=None, scheduler=None, classes=[f"class{i}" for i in range(n)],
                       palette=[[37 * i % 256, 91 * i % 256, 53 * i % 256] for i in range(n)],
                       model_config=plain(cfg.model), data_config=plain(cfg.data), **module_args)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpts")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = make_checkpoint(folder / f"{family}.ckpt", family)
        return cache[family]
    return get


def _eager(ckpt: Path):
    from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint
    return module_from_checkpoint(load_checkpoint(str(ckpt)), {}).model.eval()


@pytest.mark.parametrize("family", ["fcn8s", "fcn_dilated", "deeplabv3", "deeplabv3plus", "unet"])
def test_onnx_export_of_every_family_matches_eager_pytorch_at_odd_sizes(ckpts, family, tmp_path, capsys):
    out = tmp_path / f"{family}.onnx"
    side = exporting.export_checkpoint(str(ckpts(family)), "onnx", out, OPTS)
    assert "parity (" in capsys.readouterr().out
    p = side["parity"]
    print(f"{family}: max |logit diff| {p['max_abs_logit_diff']:.3g}, argmax agreement {p['argmax_agreement']}")
    assert p["max_abs_logit_diff"] <= 1e-4 and p["argmax_agreement"] >= 0.9999
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"{family}.onnx", f"{family}.onnx.json"]
    assert json.loads(sidecar_path(out).read_text()) == json.loads(json.dumps(side))
    assert side["exporter"] in ("dynamo", "torchscript") and side["opset"] >= 17
    assert side["checkpoint_sha256"] and side["model_config"]["_target_"] and side["num_classes"] == 6
    model = load_exported(out)
    assert (model.outputs, model.input_dtype, model.num_classes) == ("logits", "float32", 6)
    if family != "fcn8s":
        return  # (building the eager model again costs seconds; the TorchScript test checks U-Net so)
    x = torch.rand(3, 3, 29, 71)  # a size and batch the parity check did not use
    eager = _eager(ckpts(family))  # built outside no_grad: smp models probe their stride with autograd
    with torch.no_grad():
        ref = eager(x)
    got = model(x)
    assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-4
    assert torch.equal(model((x * 255).round().to(torch.uint8)), model((x * 255).round() / 255))


@pytest.mark.parametrize("family", ["fcn8s", "unet"])
def test_torchscript_export_keeps_sizes_dynamic(ckpts, family, tmp_path):
    out = tmp_path / "m.ts"
    side = exporting.export_checkpoint(str(ckpts(family)), "torchscript", out, OPTS)
    assert side["graph"] == "torchscript" and side["exporter"] == "jit.trace"
    assert side["parity"]["max_abs_logit_diff"] <= 1e-4
    model = load_exported(out)
    x = torch.rand(1, 3, 97, 33)
    eager = _eager(ckpts(family))
    with torch.no_grad():
        assert (model(x) - eager(x)).abs().max() <= 1e-4


def test_labels_and_uint8_input(ckpts, tmp_path):
    out = tmp_path / "labels.onnx"
    side = exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", out,
                                       {**OPTS, "outputs": "labels", "input": "uint8"})
    assert side["input"] == {"dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255],
                             "height": "any", "width": "any"}
    assert side["parity"]["max_abs_logit_diff"] is None and side["parity"]["argmax_agreement"] >= 0.9999
    model = load_exported(out)
    assert (model.outputs, model.input_dtype) == ("labels", "uint8")
    img = torch.randint(0, 256, (2, 3, 45, 39), dtype=torch.uint8)
    labels = model(img)
    assert labels.shape == (2, 45, 39) and labels.dtype == torch.int64
    eager = _eager(ckpts("fcn8s"))
    with torch.no_grad():
        ref = eager(img.float() / 255).argmax(1)
    assert (labels == ref).float().mean() >= 0.9999
    assert torch.equal(model(img.float() / 255), labels)  # float input is turned back into the same bytes


def _exported(ckpts, tmp_path, name="m.onnx") -> Path:
    out = tmp_path / name
    exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", out, {**OPTS, "exporter": "torchscript"})
    return out


def test_a_sidecar_with_another_class_count_is_refused(ckpts, tmp_path):
    out = _exported(ckpts, tmp_path)
    side = json.loads(sidecar_path(out).read_text())
    side.update(classes=side["classes"] + ["extra"], num_classes=7, palette=side["palette"] + [[1, 2, 3]])
    sidecar_path(out).write_text(json.dumps(side))
    with pytest.raises(ExportError, match=r"outputs 6 classes but its sidecar .* names 7.*python -m segframe.export"):
        load_exported(out)


def test_a_missing_or_damaged_sidecar_is_refused(ckpts, tmp_path):
    out = _exported(ckpts, tmp_path)
    good = sidecar_path(out).read_text()
    sidecar_path(out).write_text(good[:100])
    with pytest.raises(ExportError, match="cannot be read.*re-export it: python -m segframe.export"):
        load_exported(out)
    sidecar_path(out).write_text(json.dumps({**json.loads(good), "format": "other"}))
    with pytest.raises(ExportError, match="not a segframe export sidecar"):
        read_sidecar(out)
    sidecar_path(out).unlink()
    with pytest.raises(SegframeError, match=r"has no sidecar .*m\.onnx\.json.*python -m segframe.export"):
        load_exported(out)


def test_a_failed_parity_check_writes_nothing(ckpts, tmp_path, monkeypatch):
    real = exporting._runner

    def off_by_a_little(path, kind):
        run = real(path, kind)
        return lambda x: run(x) + 1e-3
    monkeypatch.setattr(exporting, "_runner", off_by_a_little)
    with pytest.raises(ExportError, match=r"nothing written.*max \|logit difference\| 0\.001.*allowed <= 0\.0001"):
        exporting.export_checkpoint(str(ckpts("fcn8s")), "torchscript", tmp_path / "m.ts", OPTS)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_onnx_names_the_extra(ckpts, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ExportError, match=r'pip install "segframe\[export\]"'):
        exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", tmp_path / "m.onnx", OPTS)
    assert list(tmp_path.iterdir()) == []


def test_channels_last_and_compiled_checkpoints_export(tmp_path):
    ckpt = make_checkpoint(tmp_path / "cl.ckpt", "fcn8s", channels_last=True, torch_compile=True)
    data = torch.load(ckpt, weights_only=True)
    assert data["hyper_parameters"]["channels_last"] and data["hyper_parameters"]["torch_compile"]
    side = exporting.export_checkpoint(str(ckpt), "onnx", tmp_path / "cl.onnx", {**OPTS, "exporter": "torchscript"})
    assert side["parity"]["max_abs_logit_diff"] <= 1e-4
    # a model compiled in place stores its tensors as model._orig_mod.<name>
    data["state_dict"] = {k.replace("model.", "model._orig_mod.", 1): v for k, v in data["state_dict"].items()}
    torch.save(data, tmp_path / "compiled.ckpt")
    side = exporting.export_checkpoint(str(tmp_path / "compiled.ckpt"), "torchscript", tmp_path / "c.ts", OPTS)
    assert side["parity"]["max_abs_logit_diff"] <= 1e-4


def test_refusals_before_any_work(ckpts, tmp_path):
    with pytest.raises(ExportError, match="a onnx graph is named"):
        exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", tmp_path / "m.pt", OPTS)
    with pytest.raises(ExportError, match="export.outputs must be"):
        exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", tmp_path / "m.onnx", {**OPTS, "outputs": "probs"})


@pytest.mark.slow  # three commands in subprocesses: 18 s alone, 25 s on a busy 2-core machine
def test_predict_from_onnx_equals_predict_from_the_checkpoint(ckpts, tmp_path):
    ckpt = ckpts("fcn8s")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (41, 67), "b": (64, 33)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    ok(run_cli("export", f"ckpt={ckpt}", f"output={tmp_path / 'm.onnx'}", "export.exporter=torchscript"))
    ok(run_cli("predict", f"ckpt={ckpt}", f"input={images}", f"output={tmp_path / 'from_ckpt'}", "device=cpu"))
    ok(run_cli("predict", f"ckpt={tmp_path / 'm.onnx'}", f"input={images}", f"output={tmp_path / 'from_onnx'}",
               "device=cpu"))
    for name in ("a", "b"):  # byte-equal masks (a float tie flipping a class would show here)
        assert (tmp_path / "from_onnx" / f"{name}_mask.png").read_bytes() == \
            (tmp_path / "from_ckpt" / f"{name}_mask.png").read_bytes()


def test_predict_refuses_averaging_class_ids(ckpts, tmp_path):
    from segframe.core.errors import ConfigError
    from segframe.deploy.prediction import ExportedPredictor

    out = tmp_path / "labels.onnx"
    exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", out, {**OPTS, "outputs": "labels"})
    with pytest.raises(ConfigError, match="export.outputs=labels"):
        ExportedPredictor(load_exported(out), {"flip": True})
    predictor = ExportedPredictor(load_exported(out), {})
    img = torch.randint(0, 256, (1, 3, 35, 35), dtype=torch.uint8)
    assert torch.equal(predictor.predict_scores(img).argmax(1), load_exported(out)(img))


def test_exported_predictor_runs_the_test_time_options_as_the_checkpoint_does(ckpts, tmp_path):
    from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint
    from segframe.deploy.prediction import ExportedPredictor

    out = _exported(ckpts, tmp_path)
    options = {"scales": [0.75, 1.0], "flip": True, "mode": "slide", "crop": 32, "stride": 21}
    module = module_from_checkpoint(load_checkpoint(str(ckpts("fcn8s"))), options).eval()
    img = torch.randint(0, 256, (1, 3, 47, 59), dtype=torch.uint8)
    with torch.no_grad():
        ref = module.predict_scores(img)
    got = ExportedPredictor(load_exported(out), options).predict_scores(img)
    assert got.shape == ref.shape and (got - ref).abs().max() <= 1e-4
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.9999


def test_the_dynamo_exporter_when_onnxscript_is_installed(ckpts, tmp_path):
    pytest.importorskip("onnxscript")
    from segframe.deploy.exported import onnx_session

    out = tmp_path / "m.onnx"
    side = exporting.export_checkpoint(str(ckpts("fcn8s")), "onnx", out, {**OPTS, "exporter": "dynamo"})
    assert side["exporter"] == "dynamo" and side["opset"] >= 18 and side["parity"]["max_abs_logit_diff"] <= 1e-4
    assert [i.name for i in onnx_session(out).get_inputs()] == ["images"]  # the name docs/export.md's snippet feeds
    assert load_exported(out)(torch.rand(1, 3, 33, 65)).shape == (1, 6, 33, 65)


@pytest.mark.slow
def test_a_checkpoint_trained_with_channels_last_and_torch_compile_exports(tmp_path):
    """Trained for real under both knobs (torch.compile's first steps compile: ~1 min on a CPU), then
    exported to ONNX through the command line, parity checked."""
    from helpers.config import tiny

    run = tmp_path / "run"
    ok(run_cli("train", *tiny("module.channels_last=true", "module.torch_compile=true", "trainer.max_epochs=1",
                              "report.num_images=0", "logger=none"),
               f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run}", timeout=900))
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    hp = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["channels_last"] and hp["torch_compile"]
    out = tmp_path / "model.onnx"
    res = run_cli("export", f"ckpt={ckpt}", "format=onnx", f"output={out}")
    ok(res)
    assert "parity" in res.stdout and read_sidecar(out)["parity"]["argmax_agreement"] >= 0.9999
