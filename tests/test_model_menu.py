"""The model menu beyond FCN-32s/16s/8s: dilated FCN and segmentation_models_pytorch's families.

Each keeps the model contract (any H x W in, logits at H x W out), trains every parameter, records
its output stride, loads ImageNet weights from a local file, and can start from another checkpoint.
"""

from __future__ import annotations

import urllib.error

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import torchvision
from hydra.utils import instantiate
from torch import nn

from segframe.models import FCN, load_matching_weights
from segframe.models.backbones import PretrainedWeightsError
from segframe.models.dilated import DilatedFCN
from segframe.models.smp import SmpModel
from segframe.models.summary import gflops, parameter_count

from helpers.config import compose

C = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise_zero_heads(model: nn.Module) -> None:
    # FCN score layers start at zero (the paper's init), which gives the backbone no gradient on
    # the first step; randomise them so "every parameter gets a gradient" means something
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.out_channels == C and not module.weight.any():
            nn.init.normal_(module.weight, std=0.01)


def _coarse_size(model: nn.Module, x: torch.Tensor) -> int:
    """Width of the coarsest logits the head computes, read by a hook (not from the model's claim)."""
    seen: list[int] = []
    if isinstance(model, DilatedFCN):
        hook = model.score.register_forward_hook(lambda _m, _a, out: seen.append(out.shape[-1]))
    else:
        hook = model.net.segmentation_head.register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[-1]))
    with torch.no_grad():
        model.eval()(x)
    hook.remove()
    return seen[0]


# (model, the output stride the literature gives for it)
CASES = {
    "fcn_dilated-resnet18-os8": (lambda: DilatedFCN(C, "resnet18", 8), 8),
    "fcn_dilated-resnet34-os16": (lambda: DilatedFCN(C, "resnet34", 16), 16),
    "fcn_dilated-resnet50-os8": (lambda: DilatedFCN(C, "resnet50", 8), 8),
    "fcn_dilated-resnet101-os16": (lambda: DilatedFCN(C, "resnet101", 16), 16),
    "deeplabv3-resnet18-os8": (lambda: SmpModel(C, "DeepLabV3", "resnet18", output_stride=8), 8),
    "deeplabv3-resnet50-os16": (lambda: SmpModel(C, "DeepLabV3", "resnet50", output_stride=16), 16),
    "deeplabv3plus-resnet18-os16": (lambda: SmpModel(C, "DeepLabV3Plus", "resnet18", output_stride=16), 4),
    "deeplabv3plus-resnet34-os8": (lambda: SmpModel(C, "DeepLabV3Plus", "resnet34", output_stride=8), 4),
    "unet-resnet18": (lambda: SmpModel(C, "Unet", "resnet18"), 1),
    "unet-resnet50": (lambda: SmpModel(C, "Unet", "resnet50"), 1),
    "smp-fpn-resnet18": (lambda: SmpModel(C, "FPN", "resnet18"), 4),
    "smp-pspnet-resnet18": (lambda: SmpModel(C, "PSPNet", "resnet18"), 8),
    "smp-unet-tu-resnet18": (lambda: SmpModel(C, "Unet", "tu-resnet18"), 1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_contract_gradients_and_output_stride(name: str) -> None:
    torch.manual_seed(0)
    build, stride = CASES[name]
    model = build().train()
    _randomise_zero_heads(model)
    x = torch.rand(2, 3, 37, 53)  # odd, not a multiple of any stride
    logits = model(x)
    assert logits.shape == (2, C, 37, 53) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.randint(0, C, (2, 37, 53))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.isfinite().all())]
    assert not no_grad, no_grad
    assert model.output_stride == stride
    padded = 64  # 37x53 pads to 64x64 at every family's pad multiple
    assert padded // _coarse_size(model, torch.rand(1, 3, 37, 53)) == stride


def test_dilated_resnet18_keeps_resolution_and_imagenet_weights(tmp_path) -> None:
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = DilatedFCN(C, "resnet18", 8, pretrained=str(tmp_path / "resnet18.pth"))
    for name, tensor in resnet.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[name], tensor), name
    # layer3/4 keep 1/8: BasicBlocks dilated by hand (torchvision's raise on dilation > 1)
    feats = model.backbone(torch.rand(1, 3, 64, 64))
    assert feats["s8"].shape[-1] == feats["s16"].shape[-1] == feats["s32"].shape[-1] == 8
    assert model.backbone.layer4[1].conv2.dilation == (4, 4) and model.backbone.layer4[0].conv1.dilation == (2, 2)


@pytest.mark.parametrize("encoder,weights", [
    ("resnet18", lambda: torchvision.models.resnet18(weights=None).state_dict()),  # torchvision keys, fc included
    ("tu-resnet18", lambda: __import__("timm").create_model("resnet18").state_dict()),  # timm keys
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(weights=None).state_dict()),
    # timm's feature wrapper renames nested stages (stages.0 -> stages_0): the file still fits
    ("tu-convnext_tiny", lambda: __import__("timm").create_model("convnext_tiny").state_dict()),
])
def test_encoder_weights_from_a_local_file(tmp_path, encoder, weights) -> None:
    torch.manual_seed(1)
    state = weights()
    path = tmp_path / f"{encoder}.pth"
    torch.save(state, path)
    model = SmpModel(C, "Unet", encoder, pretrained=str(path))
    own = model.net.encoder.state_dict()
    from segframe.models.smp import _timm_name

    name_in_file = {k: (_timm_name(k) if encoder.startswith("tu-") else k) for k in own}
    assert all(name_in_file[k] in state for k in own)
    for key, tensor in own.items():
        assert torch.equal(tensor, state[name_in_file[key]]), key


def test_encoder_weights_errors_say_what_to_do(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*model\.pretrained"):
        SmpModel(C, "Unet", "resnet18", pretrained=str(tmp_path / "nope.pth"))
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match=r"resnet34\.pth does not fit this encoder.*unexpected: layer1\.2"):
        SmpModel(C, "Unet", "resnet18", pretrained=str(tmp_path / "resnet34.pth"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    # ResNet encoders take torchvision's file through the torch hub cache, as FCN's backbones do
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-f37072fd\.pth.*model\.pretrained=/path/to"):
        SmpModel(C, "DeepLabV3Plus", "resnet18", pretrained=True)

    # other encoders download through smp/timm: the message says how to save a file for offline use
    real = smp.create_model

    def no_hub(*args, **kwargs):
        if kwargs.get("encoder_weights"):
            raise OSError("couldn't connect to huggingface.co")
        return real(*args, **kwargs)

    monkeypatch.setattr(smp, "create_model", no_hub)
    with pytest.raises(PretrainedWeightsError, match=r"tu-resnet18.*timm\.create_model\('resnet18', pretrained=True\)"):
        SmpModel(C, "Unet", "tu-resnet18", pretrained=True)


@pytest.mark.parametrize("arch,frozen", [("PSPNet", ("layer3.", "layer4.")), ("Unet", ()), ("FPN", ()),
                                          ("DeepLabV3", ())])
def test_only_parameters_no_output_depends_on_are_frozen(arch, frozen) -> None:
    # smp keeps the ResNet stages PSPNet (encoder_depth 3) never runs, so a full ImageNet file loads
    model = SmpModel(C, arch, "resnet18")
    still = {n for n, p in model.net.named_parameters() if not p.requires_grad}
    assert {n.split(".")[1] + "." for n in still} == set(frozen)
    model.train()(torch.rand(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_bad_choices_are_refused_before_any_work() -> None:
    with pytest.raises(ValueError, match="model.arch='Unet3'.*deeplabv3plus"):
        SmpModel(C, "Unet3", "resnet18")
    with pytest.raises(ValueError, match="model.backbone='resnet19'"):
        SmpModel(C, "Unet", "resnet19")
    with pytest.raises(ValueError, match="model.backbone='tu-no_such_net'"):
        SmpModel(C, "Unet", "tu-no_such_net")
    with pytest.raises(ValueError, match="model.output_stride applies to deeplabv3"):
        SmpModel(C, "Unet", "resnet18", output_stride=8)
    with pytest.raises(ValueError, match="model.output_stride must be one of"):
        DilatedFCN(C, "resnet18", 32)
    with pytest.raises(ValueError, match="model.backbone='vgg16': unknown backbone for fcn_dilated"):
        DilatedFCN(C, "vgg16", 8)
    with pytest.raises(ValueError, match=r"model.options may not set \['aux_params'\]"):
        SmpModel(C, "Unet", "resnet18", options={"aux_params": {"classes": 2}})
    # timm weights carry their own input statistics (here 0.5 / 0.5): a mismatch names the keys to set
    with pytest.raises(ValueError, match=r"tu-vit_tiny_patch16_224.*model.mean=\[0.5, 0.5, 0.5\]"):
        SmpModel(C, "Unet", "tu-vit_tiny_patch16_224", pretrained="unused.pth")


def _lightning_ckpt(model: nn.Module, path) -> None:
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)


def test_init_from_between_compatible_models(tmp_path) -> None:
    torch.manual_seed(2)
    fcn8 = FCN(C, stride=8, backbone="resnet18")
    _lightning_ckpt(fcn8, tmp_path / "fcn8s.ckpt")
    dilated = DilatedFCN(C, "resnet18", 8, init_from=str(tmp_path / "fcn8s.ckpt"))
    for name, tensor in fcn8.backbone.state_dict().items():  # the whole backbone; the head starts fresh
        assert torch.equal(dilated.backbone.state_dict()[name], tensor), name
    assert not dilated.score.weight.any()

    unet = SmpModel(C, "Unet", "resnet18")
    _lightning_ckpt(unet, tmp_path / "unet.ckpt")
    again = SmpModel(C, "Unet", "resnet18", init_from=str(tmp_path / "unet.ckpt"))
    copied, new = load_matching_weights(again, str(tmp_path / "unet.ckpt"))
    assert not new and all(torch.equal(again.state_dict()[k], v) for k, v in unet.state_dict().items())
    with pytest.raises(ValueError, match=f"checkpoint has {C} classes, model has 3"):
        SmpModel(3, "Unet", "resnet18", init_from=str(tmp_path / "unet.ckpt"))
    with pytest.raises(ValueError, match="no tensor matches"):
        SmpModel(C, "Unet", "resnet18", init_from=str(tmp_path / "fcn8s.ckpt"))  # other names entirely


MENU = ["fcn32s", "fcn16s", "fcn8s", "fcn_dilated", "deeplabv3", "deeplabv3plus", "unet", "smp"]


@pytest.mark.parametrize("name", MENU)
def test_every_model_config_composes_and_builds(name: str) -> None:
    cfg = compose([f"model={name}", "model.pretrained=false", "data=shapes"])
    model = instantiate(cfg.model).eval()  # eval: DeepLab's image-pooling BN needs batch > 1 to train
    assert model(torch.rand(1, 3, 40, 56)).shape == (1, 6, 40, 56)
    assert parameter_count(model) > 0 and model.output_stride >= 1


def test_parameter_count_and_flops() -> None:
    model = DilatedFCN(C, "resnet18", 8)
    # ResNet-18 without fc (11,176,512) + a 512 -> C score layer
    assert parameter_count(model) == 11_176_512 + 512 * C + C
    # FLOPs grow with the pixel count; a multiply-add counts 2
    small, big = gflops(model, 64, 64), gflops(model, 128, 128)
    assert big == pytest.approx(4 * small, rel=0.02)
    conv = nn.Conv2d(3, 8, 1, bias=False)
    assert gflops(nn.Sequential(conv), 10, 10) == pytest.approx(2 * 3 * 8 * 100 / 1e9)
