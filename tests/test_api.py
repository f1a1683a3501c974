"""The Python API (segframe.deploy.api): `load_model` on a checkpoint, every input type, probabilities,
test-time options, refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.checkpoints import CLASSES, PALETTE, small_fcn_checkpoint
from segframe import load_model
from segframe.core.errors import ConfigError, InputError, MissingFileError, SegframeError

H, W = 37, 53  # odd sizes: not a multiple of the model's stride


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint as training writes it, of a small FCN with random (non-zero) weights."""
    return small_fcn_checkpoint(tmp_path_factory.mktemp("api") / "best.ckpt")


@pytest.fixture(scope="module")
def model(ckpt):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images gain nothing from threads on a shared machine
    yield load_model(ckpt, device="cpu")
    torch.set_num_threads(threads)


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def test_every_input_type_gives_the_same_mask(model, tmp_path):
    array = _image()
    Image.fromarray(array).save(tmp_path / "a.png")
    expected = model.predict(array)
    assert expected.shape == (H, W) and expected.dtype == np.uint8 and expected.max() < len(CLASSES)
    for given in (str(tmp_path / "a.png"), tmp_path / "a.png", Image.fromarray(array),
                  Image.fromarray(array).convert("RGBA"), np.dstack([array, np.full((H, W), 255, np.uint8)])):
        np.testing.assert_array_equal(model.predict(given), expected)
    assert len(np.unique(expected)) > 1  # a model that says something: the comparisons above mean something


def test_greyscale_becomes_rgb(model):
    grey = _image()[..., 0]
    expected = model.predict(np.dstack([grey] * 3))
    np.testing.assert_array_equal(model.predict(Image.fromarray(grey, mode="L")), expected)
    np.testing.assert_array_equal(model.predict(grey), expected)


def test_predict_is_argmax_of_probabilities_that_sum_to_one(model):
    probs = model.predict_proba(_image(1))
    assert probs.shape == (len(CLASSES), H, W) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5) and probs.min() >= 0
    np.testing.assert_array_equal(model.predict(_image(1)), probs.argmax(0))


def test_flip_is_exactly_mirror_symmetric(model):
    """With flip, the scores of a mirrored image are the mirrored scores: each averages p(x) and
    mirror(p(mirror(x)))."""
    image = _image(2)
    probs = model.predict_proba(image, flip=True)
    mirrored = model.predict_proba(image[:, ::-1].copy(), flip=True)
    np.testing.assert_allclose(mirrored[..., ::-1], probs, atol=1e-6)
    assert np.allclose(probs.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("options", [{"scales": [0.75, 1.0, 1.25]}, {"scales": [0.5, 1.0], "flip": True},
                                     {"mode": "slide", "crop": 32, "stride": 20}])
def test_test_time_options_keep_the_shape(model, ckpt, options):
    probs = model.predict_proba(_image(3), **options)
    assert probs.shape == (len(CLASSES), H, W) and np.allclose(probs.sum(0), 1.0, atol=1e-5)
    loaded = load_model(ckpt, device="cpu", **options)  # the same, as load_model's defaults
    assert loaded.options == options
    np.testing.assert_allclose(loaded.predict_proba(_image(3)), probs, atol=1e-6)


def test_classes_palette_colorize(model):
    assert model.classes == CLASSES and model.palette == PALETTE and model.num_classes == 3
    mask = np.array([[0, 1], [2, 255]], np.uint8)
    assert model.colorize(mask).tolist() == [[[0, 0, 0], [230, 25, 75]], [[60, 180, 75], [255, 255, 255]]]
    assert not model.net.training


@pytest.mark.parametrize("bad, words", [
    (np.zeros((H, W, 3), np.float32), "dtype float32"),
    (np.zeros((3, H, W), np.uint8), f"shape (3, {H}, {W})"),
    (np.zeros((2, H, W, 3), np.uint8), "shape (2,"),
    (torch.zeros(3, H, W, dtype=torch.uint8), "torch.Tensor was passed"),
    ([[0, 1]], "builtins.list was passed"),
    (Image.new("I;16", (W, H)), "mode 'I;16'"),
])
def test_bad_input_is_refused_with_what_was_expected(model, bad, words):
    with pytest.raises(InputError) as info:
        model.predict(bad)
    assert words in str(info.value) and "expected" in str(info.value)
    assert isinstance(info.value, SegframeError)


def test_refusals_before_any_work(model, ckpt, tmp_path):
    with pytest.raises(MissingFileError, match="nowhere.png"):
        model.predict(tmp_path / "nowhere.png")
    with pytest.raises(ConfigError, match="eval.mode must be one of"):
        load_model(tmp_path / "not-even-there.ckpt", mode="slid")  # options first, before the file
    with pytest.raises(ConfigError, match="eval.scales"):
        model.predict(_image(), scales=[0])
    with pytest.raises(ConfigError, match="unknown test-time option"):
        model.predict(_image(), flipped=True)
    with pytest.raises(ConfigError, match="device='tpu'"):
        load_model(ckpt, device="tpu")
    with pytest.raises(MissingFileError):
        load_model(tmp_path / "missing.ckpt")
    with pytest.raises(MissingFileError, match="segframe.export"):
        load_model(tmp_path / "missing.onnx")


def test_import_segframe_stays_free_of_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, segframe; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- exported graphs

EXPORT_OPTIONS = {"outputs": "logits", "input": "float", "exporter": "torchscript", "opset": None,
                  "tolerance": 1e-4, "min_agreement": 0.9999}


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.ts"), ("onnx", "model.onnx")])
def test_exported_graph_predicts_like_its_checkpoint(model, ckpt, tmp_path, fmt, name):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from segframe.deploy.exporting import export_checkpoint

    graph = tmp_path / name
    export_checkpoint(str(ckpt), fmt, graph, EXPORT_OPTIONS)
    exported = load_model(graph, device="cpu")
    assert exported.classes == CLASSES and exported.palette == PALETTE
    image = _image(4)
    for options in ({}, {"flip": True, "scales": [0.75, 1.0]}, {"mode": "slide", "crop": 32, "stride": 20}):
        np.testing.assert_allclose(exported.predict_proba(image, **options), model.predict_proba(image, **options),
                                   atol=1e-4)
        assert (exported.predict(image, **options) == model.predict(image, **options)).mean() > 0.999


def test_exported_labels_graph_gives_masks_only(model, ckpt, tmp_path):
    from segframe.deploy.exporting import export_checkpoint

    graph = tmp_path / "labels.ts"
    export_checkpoint(str(ckpt), "torchscript", graph, {**EXPORT_OPTIONS, "outputs": "labels"})
    exported = load_model(graph, device="cpu")
    mask = exported.predict(_image(5))
    assert mask.shape == (H, W) and mask.dtype == np.uint8
    assert (mask == model.predict(_image(5))).mean() > 0.999
    with pytest.raises(ConfigError, match="outputs=labels"):
        exported.predict_proba(_image(5))
    with pytest.raises(ConfigError, match="no test-time options"):
        exported.predict(_image(5), flip=True)
