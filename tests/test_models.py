"""FCN models: shapes on odd sizes, gradients, bilinear/zero init, VGG fc->conv, weight loading."""

from __future__ import annotations

import logging
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from segframe.models import FCN, load_matching_weights
from segframe.models.backbones import VGG16Backbone
from segframe.models.fcn import bilinear_kernel, upsampler

NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny tensors run faster on one thread


def randomise_scores(model: FCN) -> None:
    # score layers start at zero (paper), which gives the backbone zero gradient on the first step;
    # randomise them so the "every parameter gets a gradient" check is meaningful
    for name, module in model.named_children():
        if name.startswith("score_"):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.normal_(module.bias, std=0.01)


@pytest.mark.parametrize("backbone", ["vgg16", "resnet18", "resnet50"])
@pytest.mark.parametrize("stride", [32, 16, 8])
def test_shapes_and_gradients(backbone: str, stride: int) -> None:
    torch.manual_seed(0)
    model = FCN(NUM_CLASSES, stride=stride, backbone=backbone).train()  # batch 2 so train-mode BN works
    children = {n for n, _ in model.named_children()}
    expected = {"backbone", "score_s32", "up_final"}
    expected |= {"score_s16", "up_s32"} if stride <= 16 else set()
    expected |= {"score_s8", "up_s16"} if stride == 8 else set()
    assert children == expected
    randomise_scores(model)
    x = torch.rand(2, 3, 33, 47)  # odd, not a multiple of 32
    logits = model(x)
    assert logits.shape == (2, NUM_CLASSES, 33, 47)
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, NUM_CLASSES, (2, 33, 47))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad


@pytest.mark.parametrize("backbone", ["resnet34", "resnet101"])
def test_other_resnets_build(backbone: str) -> None:
    model = FCN(3, stride=8, backbone=backbone).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 40, 35)).shape == (1, 3, 40, 35)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        FCN(3, backbone="resnet152")
    with pytest.raises(ValueError, match="stride"):
        FCN(3, stride=4, backbone="resnet18")


def test_zero_init_gives_zero_logits() -> None:
    torch.manual_seed(0)
    model = FCN(NUM_CLASSES, stride=8, backbone="resnet18").eval()
    with torch.no_grad():
        assert torch.equal(model(torch.rand(1, 3, 64, 64)), torch.zeros(1, NUM_CLASSES, 64, 64))


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_upsampling(factor: int) -> None:
    up = upsampler(2, factor)
    assert up.weight.shape == (2, 2, 2 * factor, 2 * factor)
    inner = slice(factor, -factor)  # away from the borders (only one input pixel contributes there)
    with torch.no_grad():
        const = up(torch.full((1, 2, 4, 5), 3.0))
        assert const.shape == (1, 2, 4 * factor, 5 * factor)
        torch.testing.assert_close(const[..., inner, inner], torch.full_like(const[..., inner, inner], 3.0))
        # a ramp along x stays a ramp: equal steps of 1/factor per output pixel, constant along y
        ramp = torch.arange(5.0).expand(1, 2, 4, 5).contiguous()
        out = up(ramp)[..., inner, inner]
        steps = out.diff(dim=-1)
        torch.testing.assert_close(steps, torch.full_like(steps, 1.0 / factor))
        torch.testing.assert_close(out.diff(dim=-2), torch.zeros_like(out.diff(dim=-2)))
        # and it is the usual half-pixel (align_corners=False) bilinear interpolation
        x = torch.randn(1, 2, 4, 5)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        torch.testing.assert_close(up(x)[..., inner, inner], ref[..., inner, inner])
    # channels do not mix
    assert bilinear_kernel(3, 4)[0, 1].abs().sum() == 0


def test_normalisation_inside_model() -> None:
    model = FCN(2, stride=32, backbone="resnet18", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), input_scale=2.0).eval()
    assert model.norm_mean == (0.5, 0.5, 0.5) and model.input_scale == 2.0
    assert "mean" not in model.state_dict()  # config, not weights: rebuilt from hparams
    seen = {}

    def grab_input(module, inputs, output) -> None:
        seen["x"] = inputs[0]

    model.backbone.conv1.register_forward_hook(grab_input)
    with torch.no_grad():
        model(torch.full((1, 3, 32, 32), 0.5))
    torch.testing.assert_close(seen["x"][0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))


def test_caffe_normalisation_bgr_0_255() -> None:
    """Caffe VGG16: BGR, 0..255, BGR mean subtracted, no std; the checkpoint's model config carries it."""
    caffe_mean = (103.939, 116.779, 123.68)
    model = FCN(2, stride=32, backbone="resnet18", mean=caffe_mean, std=(1, 1, 1), input_scale=255.0,
                channel_order="bgr").eval()
    seen = {}

    def grab_input(module, inputs, output) -> None:  # returning None keeps the output
        seen["x"] = inputs[0]

    model.backbone.conv1.register_forward_hook(grab_input)
    rgb = torch.tensor([0.2, 0.4, 0.6]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():
        model(rgb)
    expected = torch.tensor([0.6 * 255 - 103.939, 0.4 * 255 - 116.779, 0.2 * 255 - 123.68])
    torch.testing.assert_close(seen["x"][0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="channel_order"):
        FCN(2, stride=32, backbone="resnet18", channel_order="gbr")


def test_vgg_fc_as_conv_equals_linear(tmp_path) -> None:
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).eval()
    path = tmp_path / "vgg16-local.pth"
    torch.save(vgg.state_dict(), path)
    backbone = VGG16Backbone(pretrained=str(path)).eval()
    torch.testing.assert_close(backbone.to_s8[0].weight, vgg.features[0].weight, rtol=0, atol=0)
    pool5 = torch.randn(1, 512, 7, 7)
    with torch.no_grad():
        conv = backbone.fc7(torch.relu(backbone.fc6(pool5)))[0, :, 3, 3]  # centre pixel sees the whole 7x7
        lin = vgg.classifier[3](torch.relu(vgg.classifier[0](pool5.flatten(1))))[0]
    torch.testing.assert_close(conv, lin, rtol=1e-4, atol=1e-4 * lin.abs().max().item())
    # the im2col path used on CPU for maps smaller than the 7x7 kernel computes the same conv
    small = torch.randn(2, 512, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(backbone.conv_fc6(small), backbone.fc6(small), rtol=1e-4, atol=1e-4)


def test_pretrained_download_fails_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # empty cache

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(RuntimeError) as info:
        FCN(3, stride=32, backbone="resnet18", pretrained=True)
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg and "https://download.pytorch.org/models/" in msg
    assert "model.pretrained=" in msg and str(tmp_path / "hub" / "checkpoints") in msg


def test_pretrained_from_hub_cache_offline(tmp_path, monkeypatch) -> None:
    # a file already in <hub>/checkpoints is used without any download
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(ref.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    # check_hash only applies to fresh downloads, so a fake file in the cache loads
    model = FCN(3, stride=32, backbone="resnet18", pretrained=True)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, ref.layer4[1].conv2.weight, rtol=0, atol=0)


def test_pretrained_local_path_errors(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth") as info:
        FCN(3, stride=32, backbone="resnet18", pretrained=str(missing))
    assert "model.pretrained=" in str(info.value)
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="missing.*conv1.weight") as info:
        FCN(3, stride=32, backbone="resnet18", pretrained=str(wrong))
    assert "foo.weight" in str(info.value)


def test_staged_init_from_coarser(tmp_path, caplog) -> None:
    torch.manual_seed(0)
    fcn32 = FCN(NUM_CLASSES, stride=32, backbone="resnet18").eval()
    with torch.no_grad():  # "trained" weights; up_final stays bilinear (it is not copied to 16s anyway)
        for p in [*fcn32.backbone.parameters(), *fcn32.score_s32.parameters()]:
            p.normal_(0, 0.05)
    ckpt = tmp_path / "fcn32s.ckpt"
    torch.save({"epoch": 3, "state_dict": {"model." + k: v for k, v in fcn32.state_dict().items()}}, ckpt)

    with caplog.at_level(logging.INFO, logger="segframe.models"):
        fcn16 = FCN(NUM_CLASSES, stride=16, backbone="resnet18", init_from=str(ckpt)).eval()
    assert "copied" in caplog.text and "score_s16.weight" in caplog.text
    s16, s32 = fcn16.state_dict(), fcn32.state_dict()
    for name, value in s32.items():
        if not name.startswith("up_final"):
            assert torch.equal(s16[name], value), name
    assert fcn16.score_s16.weight.abs().sum() == 0 and fcn16.score_s16.bias.abs().sum() == 0

    copied, new = load_matching_weights(fcn16, str(ckpt))
    assert "score_s32.weight" in copied and "backbone.layer4.1.conv2.weight" in copied
    assert {"score_s16.weight", "score_s16.bias", "up_s32.weight", "up_final.weight"} <= set(new)
    assert not any(n.startswith("backbone.") for n in new)

    # score_s16 = 0, so FCN-16s = bilinear x2 then x16 of the 32s score map: close to the 32s net's
    # x32 bilinear in the interior, but not identical (two linear interpolations != one)
    x = torch.rand(1, 3, 128, 160)
    with torch.no_grad():
        a, b = fcn32(x)[..., 32:-32, 32:-32], fcn16(x)[..., 32:-32, 32:-32]
    assert (a - b).abs().mean() < 0.02 * a.abs().mean()  # measured ~0.003
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.99

    # same stride: everything is copied (up_final too)
    copied, new = load_matching_weights(FCN(NUM_CLASSES, stride=32, backbone="resnet18"), str(ckpt))
    assert not new

    with pytest.raises(ValueError, match=f"has {NUM_CLASSES} classes, model has 3"):
        FCN(3, stride=16, backbone="resnet18", init_from=str(ckpt))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        FCN(3, stride=16, backbone="resnet18", init_from=str(tmp_path / "missing.ckpt"))


def test_init_from_plain_state_dict(tmp_path) -> None:
    torch.manual_seed(0)
    fcn16 = FCN(NUM_CLASSES, stride=16, backbone="resnet18")
    with torch.no_grad():
        fcn16.score_s16.weight.normal_()
    path = tmp_path / "plain.pt"
    torch.save(fcn16.state_dict(), path)
    fcn8 = FCN(NUM_CLASSES, stride=8, backbone="resnet18", init_from=str(path))
    assert torch.equal(fcn8.score_s16.weight, fcn16.score_s16.weight)
    assert torch.equal(fcn8.up_s32.weight, fcn16.up_s32.weight)
    assert fcn8.score_s8.weight.abs().sum() == 0


def test_init_from_refuses_a_parent_with_other_normalisation(tmp_path) -> None:
    parent = FCN(3, stride=32, backbone="resnet18", channel_order="bgr", input_scale=255.0,
                 mean=(103.939, 116.779, 123.68), std=(1, 1, 1))
    config = {"channel_order": "bgr", "input_scale": 255.0, "mean": [103.939, 116.779, 123.68], "std": [1, 1, 1]}
    path = tmp_path / "parent.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in parent.state_dict().items()},
                "hyper_parameters": {"model_config": config}}, path)
    with pytest.raises(ValueError, match="input normalisation"):
        FCN(3, stride=16, backbone="resnet18", init_from=str(path))  # torchvision RGB defaults
    child = FCN(3, stride=16, backbone="resnet18", init_from=str(path), channel_order="bgr", input_scale=255.0,
                mean=(103.939, 116.779, 123.68), std=(1, 1, 1))
    assert torch.equal(child.score_s32.weight, parent.score_s32.weight)


@pytest.mark.parametrize("stride", [32, 8])
def test_bf16_autocast_gradients_match_fp32(stride: int) -> None:
    """Under bf16 autocast on the CPU (trainer.precision=bf16-mixed, what `auto` picks with bf16 units)
    the gradients reaching the score layers are fp32's up to bf16 rounding. On AMX CPUs oneDNN's bf16
    transposed convolution returned a wrong input gradient at stride 8 / 32 (cosine ~0, norm x0.12),
    and FCN training learnt nothing (models/fcn.py upsample); the upsamplers now run in fp32 there."""
    torch.manual_seed(0)
    classes = 8  # oneDNN took its broken path for 8 channels (5 and 21 were exact): the shapes dataset's count
    model = FCN(classes, stride, "resnet18")
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.out_channels == classes:
            torch.nn.init.normal_(m.weight, std=0.05)  # score layers: non-zero, so gradients pass through
    x, y = torch.rand(8, 3, 96, 96), torch.randint(0, classes, (8, 96, 96))

    def grads(bf16: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        F.cross_entropy(out.float(), y).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("score_")}

    fp32, bf16 = grads(False), grads(True)
    for name, g in fp32.items():
        cos = F.cosine_similarity(g.flatten(), bf16[name].flatten(), dim=0)
        assert cos > 0.98 and 0.9 < bf16[name].norm() / g.norm() < 1.1, (name, float(cos))
