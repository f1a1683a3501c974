"""The deploy path's edge cases (issue 28, items 7, 9-12), met the way a user meets them: predict
on a folder of awkward files, an exported graph beside a sidecar that is not its own, the Python API
on PIL images and labels graphs, and eval handed an exported graph."""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.checkpoints import small_fcn_checkpoint
from helpers.cli import ok, run_cli
from PIL import Image

from segframe import load_model
from segframe.core.errors import CheckpointError, ConfigError, ExportError, InputError

pytest.importorskip("onnxruntime")

OPTS = {"outputs": "logits", "input": "float", "opset": None, "exporter": "torchscript", "tolerance": 1e-4,
        "min_agreement": 0.9999}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Two checkpoints (a, b) and ONNX graphs of a: logits, labels, uint8 input; and logits of b."""
    from segframe.deploy.exporting import export_checkpoint

    folder = tmp_path_factory.mktemp("deploy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt_a, ckpt_b = small_fcn_checkpoint(folder / "a.ckpt", 0), small_fcn_checkpoint(folder / "b.ckpt", 1)
    graphs = {"logits": (ckpt_a, {}), "labels": (ckpt_a, {"outputs": "labels"}),
              "uint8": (ckpt_a, {"input": "uint8"}), "other": (ckpt_b, {})}
    out = {"ckpt": ckpt_a, "folder": folder}
    for name, (ckpt, opts) in graphs.items():
        out[name] = folder / f"{name}.onnx"
        export_checkpoint(str(ckpt), "onnx", out[name], {**OPTS, **opts})
    torch.set_num_threads(threads)
    return out


def _pair(made, tmp_path: Path, graph: str, sidecar: str) -> Path:
    """`graph`'s file beside `sidecar`'s sidecar, as a user who copied the wrong one would have them."""
    target = tmp_path / "model.onnx"
    shutil.copy(made[graph], target)
    shutil.copy(made[sidecar].with_name(made[sidecar].name + ".json"), tmp_path / "model.onnx.json")
    return target


# --------------------------------------------------------------------------- 9 (and 7): predict input=DIR

@pytest.fixture(scope="module")
def folder_run(made, tmp_path_factory):
    """`python -m segframe.predict input=DIR` on a folder of a GIF, a PPM, a PNG, a broken JPEG, a
    text file and a subfolder."""
    inputs = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    for name in ("a.gif", "b.ppm", "c.png"):
        Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(inputs / name)
    (inputs / "img07.jpg").write_bytes(b"this is not a JPEG")
    (inputs / "notes.txt").write_text("shot on a phone\n")
    (inputs / "more").mkdir()
    out = inputs.parent / "predicted"
    res = run_cli("predict", f"ckpt={made['ckpt']}", f"input={inputs}", f"output={out}", "device=cpu")
    ok(res)
    return inputs, out, res.stdout + res.stderr


def test_predict_folder_takes_every_readable_format_and_lists_what_it_skips(folder_run):
    inputs, out, printed = folder_run
    for stem in ("a", "b", "c"):  # the GIF was left out silently before; PPM too
        assert (out / f"{stem}_mask.png").is_file(), printed
    assert "wrote 3 prediction(s)" in printed
    assert f"{inputs / 'notes.txt'}: not an image file name" in printed and ".gif" in printed
    assert f"{inputs / 'more'}: a folder" in printed and "**" in printed


def test_predict_names_a_broken_file_once_and_says_why_without_a_memory_address(folder_run):
    inputs, _, printed = folder_run
    broken = str(inputs / "img07.jpg")
    lines = [line for line in printed.splitlines() if broken in line]
    assert lines and all(line.count("img07.jpg") == 1 for line in lines), lines
    assert "not a recognised image format" in lines[-1]
    assert "object at 0x" not in printed and "BytesIO" not in printed


# --------------------------------------------------------------------------- 10: graph and sidecar checked as a pair

@pytest.mark.parametrize("graph, sidecar, says", [
    ("logits", "labels", r"the graph returns logits \[B,C,H,W\] but the sidecar says outputs=labels"),
    ("labels", "logits", r"the graph returns class ids \[B,H,W\] but the sidecar says outputs=logits"),
    ("uint8", "logits", "the graph takes uint8 images but the sidecar says input float32"),
    ("logits", "uint8", "the graph takes float32 images but the sidecar says input uint8"),
    ("other", "logits", "the graph's sha256 is .* but the sidecar was written for a graph with"),
])
def test_a_graph_with_a_sidecar_not_its_own_is_refused_naming_both(made, tmp_path, graph, sidecar, says):
    from segframe.deploy.exported import load_exported

    target = _pair(made, tmp_path, graph, sidecar)
    with pytest.raises(ExportError, match=says) as caught:
        load_exported(target)
    message = str(caught.value)
    assert f"{target} and its sidecar {target}.json do not belong together" in message
    assert "32 classes" not in message  # the probe's image size, once taken for a class count
    assert f"python -m segframe.export ckpt={made['ckpt']} format=onnx output={target}" in message


def test_predict_refuses_the_pair_before_any_image(made, tmp_path):
    target = _pair(made, tmp_path, "logits", "labels")
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    res = run_cli("predict", f"ckpt={target}", f"input={image}", f"output={tmp_path / 'out'}", "device=cpu")
    assert res.returncode == 1 and "do not belong together" in res.stderr, res.stderr
    assert "Class values must be non-negative" not in res.stderr + res.stdout
    assert not (tmp_path / "out").exists()


def test_an_export_records_the_graph_hash_and_an_old_sidecar_without_it_still_loads(made, tmp_path, caplog):
    from segframe.data.manifest import sha256_file
    from segframe.deploy.exported import load_exported

    side = json.loads(made["logits"].with_name("logits.onnx.json").read_text())
    assert side["graph_sha256"] == sha256_file(made["logits"])
    target = _pair(made, tmp_path, "logits", "logits")
    del side["graph_sha256"]  # as segframe wrote sidecars before the hash
    (tmp_path / "model.onnx.json").write_text(json.dumps(side))
    with caplog.at_level(logging.WARNING, logger="segframe.deploy.exported"):
        model = load_exported(target)
    assert (model.outputs, model.num_classes) == ("logits", 3)
    assert "records no graph_sha256" in caplog.text and "python -m segframe.export" in caplog.text


# --------------------------------------------------------------------------- 11: the Python API

def _exif_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 30x41 (HxW) JPEG whose EXIF says 'rotate 90 degrees to show it' (a phone held upright)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    array = np.random.default_rng(1).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, "JPEG", exif=exif.tobytes(), quality=95)
    return path


@pytest.fixture(scope="module")
def model(made):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(made["ckpt"], device="cpu")
    torch.set_num_threads(threads)


def test_a_pil_image_is_turned_upright_like_a_path(model, tmp_path):
    path = _exif_jpeg(tmp_path / "phone.jpg")
    from_path = model.predict(path)
    with Image.open(path) as im:
        from_pil = model.predict(im)
    assert from_path.shape == (41, 30)  # shown upright: EXIF orientation 6
    assert from_pil.shape == from_path.shape and np.array_equal(from_pil, from_path)


@pytest.mark.parametrize("options", [{"crf": True}, {"flip": True}, {"scales": [0.5, 1.0]},
                                     {"mode": "slide", "crop": 16, "stride": 8}])
def test_load_model_refuses_options_a_labels_graph_cannot_honour(made, options):
    with pytest.raises(ConfigError, match="export.outputs=labels.*export.outputs=logits") as caught:
        load_model(made["labels"], device="cpu", **options)
    assert "python -m segframe.export" in str(caught.value)
    load_model(made["labels"], device="cpu", flip=False)  # one whole pass is still fine


def test_pil_images_of_other_modes_are_converted_as_the_cli_converts_files(model, tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG", quality=95)
    (tmp_path / "cmyk.jpg").write_bytes(buf.getvalue())
    with Image.open(tmp_path / "cmyk.jpg") as im:
        assert im.mode == "CMYK"
        assert np.array_equal(model.predict(im), model.predict(tmp_path / "cmyk.jpg"))  # as the CLI reads the file
    for mode in ("CMYK", "P", "LA", "1", "YCbCr"):
        image = Image.fromarray(rgb).convert(mode)
        assert np.array_equal(model.predict(image), model.predict(np.asarray(image.convert("RGB")))), mode
    with pytest.raises(InputError, match=r"I;16.*16-bit or float.*rescale it to 8 bits"):
        model.predict(Image.fromarray(rgb[..., 0].astype(np.uint16) * 257))


# --------------------------------------------------------------------------- 12: eval handed an exported graph

def test_eval_of_an_exported_graph_asks_for_the_training_checkpoint(made, tmp_path):
    res = run_cli("eval", f"ckpt={made['logits']}", "data=shapes", f"hydra.run.dir={tmp_path}/eval")
    assert res.returncode == 1
    err = res.stderr
    assert f"{made['logits']} is an exported ONNX graph, not a training checkpoint" in err, err
    assert f"python -m segframe.eval ckpt={made['ckpt']}" in err  # the checkpoint its sidecar names
    assert "evaluates training checkpoints only" in err
    assert "weights_only" not in err and "Re-running" not in err


def test_checkpoint_loading_never_passes_on_torchs_weights_only_advice(made, tmp_path):
    from segframe.engine.checkpoint import load_checkpoint

    renamed = tmp_path / "model.ckpt"  # an ONNX graph under a checkpoint's name: told by its first bytes
    shutil.copy(made["logits"], renamed)
    with pytest.raises(CheckpointError, match="is an exported ONNX graph, not a training checkpoint"):
        load_checkpoint(str(renamed), command="eval")
    from fractions import Fraction  # any Python object a weights-only load refuses

    torch.save({"hyper_parameters": Fraction(1, 3)}, tmp_path / "code.ckpt")
    res = run_cli("eval", f"ckpt={tmp_path / 'code.ckpt'}", "data=shapes", f"hydra.run.dir={tmp_path}/eval")
    assert res.returncode == 1 and f"{tmp_path / 'code.ckpt'} cannot be loaded as a segframe checkpoint" in res.stderr
    assert "pickled Python objects, which segframe never unpickles" in res.stderr
    assert "weights_only" not in res.stderr and "Re-running" not in res.stderr, res.stderr
