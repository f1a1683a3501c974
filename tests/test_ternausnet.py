"""TernausNet-16 (models/ternausnet.py): the model contract on odd sizes, the layers of the reference's UNet16
(ternaus/robot-surgery-segmentation models.py), ImageNet VGG16 weights from a local file, init_from, Hydra."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from torch import nn

from segframe.core.config import check_keys
from segframe.core.errors import ConfigError, MissingFileError, PretrainedWeightsError
from segframe.models.ternausnet import VGG16_STAGES, TernausNet16, vgg16_features

from helpers.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small tensors run faster on one thread

VGG16_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    """A VGG16 state_dict (random weights) where torch hub keeps torchvision's: <hub>/checkpoints/<file>."""
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    path = tmp_path_factory.mktemp("hub") / "checkpoints" / VGG16_FILE
    path.parent.mkdir()
    torch.save(vgg.state_dict(), path)
    return path, vgg.features


@pytest.mark.parametrize("size", [(37, 50), (64, 96), (33, 31)])
def test_logits_at_the_input_size(size):
    torch.manual_seed(0)
    model = TernausNet16(3)
    x = torch.rand(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 3, *size) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_normalisation_and_padding_inside_the_model():
    """The encoder sees (x - mean) / std padded bottom/right with zeros to a multiple of 32; the logits of
    the H x W pixels are those of the padded input, cropped."""
    model = TernausNet16(2).eval()
    seen = {}
    model.encoder[0].register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        out = model(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    assert seen["x"].shape == (1, 3, 64, 64)
    torch.testing.assert_close(seen["x"][0, :, :37, :50], (x[0] - mean[:, None, None]) / std[:, None, None])
    assert not seen["x"][..., 37:, :].any() and not seen["x"][..., 50:].any()
    with torch.no_grad():
        torch.testing.assert_close(out, model.forward_padded(seen["x"])[..., :37, :50])


def _convs(module: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in module.modules() if type(m) is kind]


def test_layers_are_the_references():
    f = 32
    model = TernausNet16(4)
    assert model.num_filters == f and model.output_stride == 1 and model.pad_multiple == 32
    # encoder: torchvision's vgg16.features, 13 3x3 convolutions with ReLU, five stages, 2x2 max pools
    encoder = _convs(model.encoder, nn.Conv2d)
    assert len(encoder) == 13 and all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in encoder)
    assert [c.out_channels for c in encoder] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert [sum(isinstance(model.encoder[i], nn.Conv2d) for i in range(a, b)) for a, b in VGG16_STAGES] == \
        [2, 2, 3, 3, 3]
    assert all(isinstance(model.encoder[b - 1], nn.ReLU) for _, b in VGG16_STAGES)
    assert model.pool.kernel_size == 2 and model.pool.stride == 2
    # decoder: (in, middle, out) of each block, the reference's UNet16 with num_filters = 32
    blocks = {"center": (512, 512, 256), "dec5": (768, 512, 256), "dec4": (768, 512, 256),
              "dec3": (512, 256, 64), "dec2": (192, 128, 32)}
    for name, (cin, middle, cout) in blocks.items():
        conv, up, relu = getattr(model, name).block
        assert (conv.conv.in_channels, conv.conv.out_channels, conv.conv.kernel_size) == (cin, middle, (3, 3)), name
        assert conv.conv.padding == (1, 1) and isinstance(conv.activation, nn.ReLU), name
        assert isinstance(up, nn.ConvTranspose2d) and isinstance(relu, nn.ReLU), name
        assert (up.in_channels, up.out_channels) == (middle, cout), name
        assert (up.kernel_size, up.stride, up.padding, up.output_padding) == ((4, 4), (2, 2), (1, 1), (0, 0)), name
    assert (model.dec1.conv.in_channels, model.dec1.conv.out_channels, model.dec1.conv.kernel_size) == (96, f, (3, 3))
    assert (model.final.in_channels, model.final.out_channels, model.final.kernel_size) == (f, 4, (1, 1))
    assert len(_convs(model, nn.Conv2d)) == 13 + 5 + 1 + 1 and len(_convs(model, nn.ConvTranspose2d)) == 5
    # the reference's UNet16(num_classes=4) has 32,202,436 parameters (counted with its models.py)
    assert sum(p.numel() for p in model.parameters()) == 32_202_436
    # its tensor names: encoder.<index in vgg16.features>, center.block.0.conv, ..., dec1.conv, final
    names = set(model.state_dict())
    assert {"encoder.28.weight", "center.block.0.conv.weight", "center.block.1.weight", "dec1.conv.bias",
            "final.weight"} <= names


def test_features_without_weights_are_torchvisions(vgg16_file):
    """The features built without the classifier have torchvision's layers, shapes and init statistics."""
    torch.manual_seed(0)
    mine, theirs = vgg16_features(False), vgg16_file[1]
    assert [type(m) for m in mine] == [type(m) for m in theirs]
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    for a, b in zip(_convs(mine, nn.Conv2d), _convs(theirs, nn.Conv2d)):
        assert not a.bias.any() and abs(a.weight.std() / b.weight.std() - 1) < 0.05


def test_pretrained_from_a_local_file_fills_the_encoder(vgg16_file, tmp_path, monkeypatch):
    path, features = vgg16_file
    model = TernausNet16(2, pretrained=str(path))
    for i, conv in enumerate(features):
        if isinstance(conv, nn.Conv2d):
            assert torch.equal(model.encoder[i].weight, conv.weight) and torch.equal(model.encoder[i].bias, conv.bias)
    # pretrained=true reads the same file from the torch hub cache, offline
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(path.parent.parent))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    assert torch.equal(TernausNet16(2, pretrained=True).encoder[28].weight, features[28].weight)


def test_pretrained_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(MissingFileError, match="nope.pth") as info:
        TernausNet16(2, pretrained=str(tmp_path / "nope.pth"))
    assert f"model.pretrained=/path/to/{VGG16_FILE}" in str(info.value)
    wrong = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="missing: features.0.weight"):
        TernausNet16(2, pretrained=str(wrong))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # empty cache, no network

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(PretrainedWeightsError, match=VGG16_FILE) as info:
        TernausNet16(2, pretrained=True)
    assert str(tmp_path / "hub" / "checkpoints") in str(info.value) and "model.pretrained=false" in str(info.value)


def test_init_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    parent = TernausNet16(3)
    path = tmp_path / "parent.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in parent.state_dict().items()}}, path)
    child = TernausNet16(3, init_from=str(path))
    assert all(torch.equal(v, parent.state_dict()[k]) for k, v in child.state_dict().items())
    with pytest.raises(ConfigError, match="checkpoint has 3 classes, model has 2"):
        TernausNet16(2, init_from=str(path))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="model.num_filters must be a positive integer"):
        TernausNet16(2, num_filters=0)
    with pytest.raises(ConfigError, match="channel_order"):
        TernausNet16(2, channel_order="gbr")


def test_hydra_config_instantiates():
    cfg = compose(["model=ternausnet16", "model.pretrained=false"])
    check_keys(cfg, "train")
    model = instantiate(cfg.model)
    assert isinstance(model, TernausNet16) and model.num_classes == cfg.data.num_classes
    assert compose(["model=ternausnet16"]).model.pretrained is True  # ImageNet VGG16, as the reference
    assert list(model.norm_mean) == [0.485, 0.456, 0.406] and list(model.norm_std) == [0.229, 0.224, 0.225]
