"""The reference FCN semantics (fcn.berkeleyvision.org, as pytorch-fcn re-implemented it), pinned:
the caffe geometry's sizes and crops, the reference weight names, fixed upsampling, and every
per-parameter setting of the paper recipes. The reference forward below is written from the
reference's description (pad 100, ceil-mode pooling, valid fc6, crops at pytorch-fcn's offsets),
not copied from it."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segframe.core.errors import ConfigError
from segframe.experiments.library import not_recorded, recipe_overrides, released_elsewhere
from segframe.models.caffe import IDENTITY, compose, crop_offset
from segframe.models.fcn import FCN, bilinear_kernel
from segframe.models.reference_weights import BACKBONE_NAMES, REFERENCE_MEAN
from segframe.engine.module import SegModule

from helpers.cli import run_cli
from helpers.config import compose as compose_config
from helpers.datasets import BT, BV, PT, PV, make_sbd, make_voc

C = 5  # classes of the small nets below
CAFFE = {"channel_order": "bgr", "input_scale": 255.0, "mean": REFERENCE_MEAN, "std": (1.0, 1.0, 1.0)}
# the reference's crops, as pytorch-fcn writes them (torchfcn/models/fcn{32,16,8}s.py)
OFFSETS = {32: {"final": 19}, 16: {"s16": 5, "final": 27}, 8: {"s16": 5, "s8": 9, "final": 31}}
CONVS = [("conv1_1", 3, 64), ("conv1_2", 64, 64), ("conv2_1", 64, 128), ("conv2_2", 128, 128),
         ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv4_1", 256, 512),
         ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv5_1", 512, 512), ("conv5_2", 512, 512),
         ("conv5_3", 512, 512)]


def reference_named(stride: int, classes: int = C, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict under the reference's names (pytorch-fcn's FCN32s/16s/8s), random non-zero weights
    (scaled to keep activations in range), bilinear upsamplers as the released files hold them. A new
    dict each call (tests change it); the tensors, 540 MB a net, are made once per module."""
    return dict(_reference_named(stride, classes, seed))


@pytest.fixture(scope="module", autouse=True)
def _forget_reference_tensors():
    yield
    _reference_named.cache_clear()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The path of reference_named(stride)'s file, written once per module."""
    folder = tmp_path_factory.mktemp("reference")

    def path(stride: int) -> Path:
        file = folder / f"fcn{stride}s.pth"
        if not file.exists():
            torch.save(reference_named(stride), file)
        return file

    return path


@functools.lru_cache(maxsize=None)
def _reference_named(stride: int, classes: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        state[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5
        state[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.01

    for name, cin, cout in CONVS:
        conv(name, cin, cout, 3)
    conv("fc6", 512, 4096, 7)
    conv("fc7", 4096, 4096, 1)
    conv("score_fr", 4096, classes, 1)
    if stride == 32:
        state["upscore.weight"] = bilinear_kernel(classes, 64)
    else:
        conv("score_pool4", 512, classes, 1)
        state["upscore2.weight"] = bilinear_kernel(classes, 4)
    if stride == 16:
        state["upscore16.weight"] = bilinear_kernel(classes, 32)
    if stride == 8:
        conv("score_pool3", 256, classes, 1)
        state["upscore_pool4.weight"] = bilinear_kernel(classes, 4)
        state["upscore8.weight"] = bilinear_kernel(classes, 16)
    return state


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor, stride: int,
                      scales: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """The reference net on a BGR 0..255 mean-subtracted input, functionally (eval: no dropout)."""
    h, w = x.shape[-2:]

    def conv(name: str, t: torch.Tensor, pad: int = 0) -> torch.Tensor:
        return F.conv2d(t, state[f"{name}.weight"], state[f"{name}.bias"], padding=pad)

    pools = {}
    t = x
    for name, _, _ in CONVS:
        t = F.relu(conv(name, t, 100 if name == "conv1_1" else 1))
        if name in ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3"):
            t = F.max_pool2d(t, 2, 2, ceil_mode=True)
            pools[name[4]] = t
    t = F.relu(conv("fc7", F.relu(conv("fc6", t))))
    score = conv("score_fr", t)

    def up(name: str, t: torch.Tensor, factor: int) -> torch.Tensor:
        return F.conv_transpose2d(t, state[f"{name}.weight"], stride=factor)

    def fuse(t: torch.Tensor, name: str, pool: torch.Tensor, scale: float, offset: int) -> torch.Tensor:
        skip = conv(name, pool * scale)
        return t + skip[..., offset:offset + t.shape[-2], offset:offset + t.shape[-1]]

    if stride == 32:
        out = up("upscore", score, 32)
    elif stride == 16:
        out = up("upscore16", fuse(up("upscore2", score, 2), "score_pool4", pools["4"], 1.0, 5), 16)
    else:
        t = fuse(up("upscore2", score, 2), "score_pool4", pools["4"], scales[0], 5)
        out = up("upscore8", fuse(up("upscore_pool4", t, 2), "score_pool3", pools["3"], scales[1], 9), 8)
    off = OFFSETS[stride]["final"]
    return out[..., off:off + h, off:off + w]


def caffe_fcn(stride: int, **kw) -> FCN:
    return FCN(C, stride, "vgg16", upsampling="fixed", padding="caffe", **{**CAFFE, **kw})


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_crop_offsets_follow_from_the_layers_and_equal_the_reference(stride):
    model = caffe_fcn(stride)
    assert model.offsets == OFFSETS[stride] and model.pad_multiple == 1
    b = model.backbone
    assert b.to_s8[0].padding == (100, 100) and b.fc6.padding == (0, 0)
    assert all(m.ceil_mode for m in model.modules() if isinstance(m, torch.nn.MaxPool2d))
    # Caffe's coord_map rule on its own: conv1_1 (k3, p100) shifts by +99, a 2x2 pool maps x to x / 2 - 1/4
    assert compose(IDENTITY, b.to_s8[:1]) == (1, 99)
    assert crop_offset((1, 19), IDENTITY) == 19
    with pytest.raises(ValueError, match="cannot align"):
        crop_offset((2, 1), IDENTITY)
    with pytest.raises(ValueError, match="cannot align"):  # a crop that would start before the blob
        crop_offset((1, -3), IDENTITY)


@pytest.mark.parametrize("stride", [32, 16, 8])
def test_caffe_geometry_matches_the_reference_forward_at_odd_sizes(stride, saved):
    """Loaded from a file under the reference's names, the caffe-geometry net computes the reference
    net's outputs (pad 100, ceil pooling, valid fc6, crops at 5 / 9 / 19, 27, 31) at sizes that are
    no multiple of anything, down to 1 pixel."""
    state = reference_named(stride)
    model = caffe_fcn(stride, init_from=str(saved(stride))).eval()
    for h, w in [(1, 1), (37, 53), (71, 30)]:
        rgb = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        bgr = rgb.flip(1) * 255 - torch.tensor(REFERENCE_MEAN).view(1, 3, 1, 1)
        with torch.no_grad():
            got, want = model(rgb), reference_forward(state, bgr, stride)
        assert got.shape == want.shape == (1, C, h, w)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_at_once_scales_its_skips_as_the_reference(tmp_path):
    state = reference_named(8, seed=1)
    torch.save({"model_state_dict": state, "iteration": 4000}, tmp_path / "checkpoint.pth.tar")  # pytorch-fcn's form
    model = caffe_fcn(8, skip_scales=[0.01, 0.0001], init_from=str(tmp_path / "checkpoint.pth.tar")).eval()
    rgb = torch.rand(1, 3, 45, 38, generator=torch.Generator().manual_seed(3))
    bgr = rgb.flip(1) * 255 - torch.tensor(REFERENCE_MEAN).view(1, 3, 1, 1)
    with torch.no_grad():
        got = model(rgb)
        want, unscaled = reference_forward(state, bgr, 8, (0.01, 0.0001)), reference_forward(state, bgr, 8)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert not torch.allclose(got, unscaled, rtol=1e-3)
    assert not any("scale" in n for n, _ in model.named_parameters())  # constants, not parameters (lr_mult 0)


def test_caffe_padding_is_for_vgg16_fcns_only():
    with pytest.raises(ConfigError, match="model.padding=caffe is the reference VGG16 FCNs' geometry.*resnet18"):
        FCN(C, 8, "resnet18", padding="caffe")
    with pytest.raises(ConfigError, match="model.padding must be one of"):
        FCN(C, 8, "resnet18", padding="same")
    with pytest.raises(ConfigError, match="model.upsampling must be one of"):
        FCN(C, 8, "resnet18", upsampling="frozen")
    with pytest.raises(ConfigError, match="skip_scales"):
        FCN(C, 16, "resnet18", skip_scales=[0.01, 0.0001])


# --------------------------------------------------------------------------- weight names


def test_reference_names_map_onto_segframes_fcn(saved):
    mapped = set(BACKBONE_NAMES.values())
    assert {f"{n}.weight" for n in mapped} | {f"{n}.bias" for n in mapped} == \
        {k for k in caffe_fcn(32).state_dict() if k.startswith("backbone.")}
    # a coarser reference net starts a finer stage: its last upsampler is left out, the new skip stays zero
    model = caffe_fcn(16, init_from=str(saved(32)))
    assert torch.equal(model.score_s32.weight, reference_named(32)["score_fr.weight"])
    assert not model.score_s16.weight.any() and torch.equal(model.up_final.weight, bilinear_kernel(C, 32))


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update({"conv6_1.weight": torch.zeros(1)}), r"1 unexpected: conv6_1.weight"),
    (lambda s: s.pop("conv5_3.bias"), r"1 missing: backbone.to_s32.28.bias"),
    (lambda s: s.update({"score_fr.weight": torch.zeros(21, 4096, 1, 1)}),
     r"shape mismatch: score_fr.weight \(21, 4096, 1, 1\) vs score_s32.weight \(5, 4096, 1, 1\)"),
])
def test_a_file_that_does_not_fit_is_refused_listing_the_tensors(tmp_path, change, message):
    state = reference_named(32)
    change(state)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=rf"init_from {tmp_path}/bad.pth: the reference FCN-32s.*{message}"):
        caffe_fcn(32, init_from=str(tmp_path / "bad.pth"))


def test_a_finer_file_or_the_wrong_input_is_refused(saved):
    fcn8s = str(saved(8))
    with pytest.raises(ConfigError, match="reference FCN-8s, finer than this FCN-32s.*model=fcn8s"):
        caffe_fcn(32, init_from=fcn8s)
    with pytest.raises(ConfigError, match="expect BGR 0..255.*model.channel_order=bgr model.input_scale=255"):
        FCN(C, 8, "vgg16", init_from=fcn8s)
    # BGR 0..255 with the ImageNet mean of [0, 1] inputs: as wrong, and refused too
    with pytest.raises(ConfigError, match=r"mean=\[0.485"):
        caffe_fcn(8, mean=(0.485, 0.456, 0.406), init_from=fcn8s)
    caffe_fcn(8, mean=(103.939, 116.779, 123.68), init_from=fcn8s)  # the VGG paper's: close


def test_a_reference_stage_starts_the_next_and_old_torch_files_load(tmp_path):
    """FCN-16s weights start an FCN-8s (the reference's staging); pytorch-fcn's 2017 files may be in
    torch's legacy (non-zip) format, which weights_only loading reads too."""
    state = reference_named(16)
    torch.save(state, tmp_path / "fcn16s.pth", _use_new_zipfile_serialization=False)
    model = caffe_fcn(8, init_from=str(tmp_path / "fcn16s.pth"))
    assert torch.equal(model.score_s16.weight, state["score_pool4.weight"])  # the pool4 skip carries over
    assert torch.equal(model.up_s32.weight, bilinear_kernel(C, 4)) and not model.score_s8.weight.any()


# --------------------------------------------------------------------------- fixed upsampling


def test_fixed_upsampling_never_trains_and_stays_bilinear():
    model = FCN(C, 8, "vgg16", upsampling="fixed")
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(ups) == 3 and not any(m.weight.requires_grad for m in ups)
    learned = FCN(C, 8, "resnet18")
    assert all(m.weight.requires_grad for m in learned.modules() if isinstance(m, torch.nn.ConvTranspose2d))
    # SGD with weight decay on every trainable tensor: the fixed kernels keep their exact values
    small = FCN(C, 8, "resnet18", upsampling="fixed")
    before = {n: p.detach().clone() for n, p in small.named_parameters() if n.startswith("up_")}
    opt = torch.optim.SGD([p for p in small.parameters() if p.requires_grad], lr=0.1, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(small(torch.rand(2, 3, 40, 40)), torch.randint(0, C, (2, 40, 40))).backward()
        opt.step()
    assert all(torch.equal(p, before[n]) for n, p in small.named_parameters() if n.startswith("up_"))


def test_fixed_upsampling_keeps_bilinear_kernels_over_learned_ones_from_a_checkpoint(tmp_path, caplog):
    trained = FCN(C, 16, "resnet18")
    with torch.no_grad():
        trained.up_final.weight.mul_(1.5)
    torch.save(trained.state_dict(), tmp_path / "learned.pth")
    model = FCN(C, 16, "resnet18", upsampling="fixed", init_from=str(tmp_path / "learned.pth"))
    assert torch.equal(model.up_final.weight, bilinear_kernel(C, 32)) and "up_final" in caplog.text


# --------------------------------------------------------------------------- the recipes


PAPER = {"fcn32s_voc_paper": (32, 1e-10, None), "fcn16s_voc_paper": (16, 1e-12, None),
         "fcn8s_voc_paper": (8, 1e-14, None), "fcn8s_atonce_voc_paper": (8, 1e-10, [0.01, 0.0001])}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipe_per_parameter_lr_decay_and_frozen_state(name):
    """The reference's conv params (lr_mult 1/2, decay_mult 1/0), Deconvolutions with lr_mult 0, and
    the solver (fixed lr, momentum 0.99, wd 5e-4), as the optimiser SegModule builds for the recipe."""
    stride, lr, scales = PAPER[name]
    cfg = compose_config([f"experiment={name}", "model.pretrained=false"])
    model = instantiate(cfg.model)
    module = SegModule(model, instantiate(cfg.optimizer), instantiate(cfg.scheduler), classes=[str(i) for i in range(21)],
                       palette=[[0, 0, 0]] * 21, model_config={}, **cfg.module)
    optimizer = module.configure_optimizers()["optimizer"]
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for pname, param in model.named_parameters():
        if pname.startswith("up_"):
            assert not param.requires_grad and id(param) not in group_of, pname  # fixed bilinear, never optimised
            assert torch.equal(param, bilinear_kernel(21, param.shape[-1]))
            continue
        group = group_of[id(param)]
        assert group["momentum"] == 0.99, pname
        if pname.endswith("bias"):
            assert group["lr"] == pytest.approx(2 * lr, rel=1e-12) and group["weight_decay"] == 0.0, pname
        else:
            assert group["lr"] == pytest.approx(lr, rel=1e-12) and group["weight_decay"] == 0.0005, pname
    assert model.stride == stride and model.offsets == OFFSETS[stride] and list(model.norm_mean) == list(REFERENCE_MEAN)
    assert model.channel_order == "bgr" and model.input_scale == 255.0 and model.norm_std == (1.0, 1.0, 1.0)
    assert model.skip_scales == (tuple(scales) if scales else (1.0, 1.0))
    assert cfg.module.loss_reduction == "sum" and cfg.datamodule.batch_size == 1 and cfg.trainer.precision == "32-true"
    assert cfg.augmentation.train._target_.endswith("identity") and cfg.data.split_mode == "seg11valid"
    assert cfg.trainer.max_steps == (300000 if scales else 100000) and cfg.trainer.val_check_interval == 4000
    assert cfg.trainer.check_val_every_n_epoch is None
    assert cfg.reference.mean.miou == {32: 63.6, 16: 65.0, 8: 65.4 if scales else 65.5}[stride]
    assert [a.name for a in cfg.reference.also] == (["pytorch-fcn"] if scales else ["pytorch-fcn", "CVPR 2015"])


@pytest.mark.parametrize("name, stride, miou", [("fcn32s", 32, 63.63), ("fcn16s", 16, 65.01), ("fcn8s", 8, 65.51),
                                                ("fcn8s_atonce", 8, 65.40)])
def test_released_experiments_evaluate_the_released_weights(name, stride, miou):
    cfg = compose_config([f"experiment={name}_voc_released"])
    assert cfg.evaluate_only and Path(cfg.model.init_from).name.endswith("_from_caffe.pth")
    assert cfg.model.padding == "caffe" and cfg.model.upsampling == "fixed" and cfg.model.stride == stride
    assert cfg.model.channel_order == "bgr" and list(cfg.model.mean) == list(REFERENCE_MEAN)
    assert cfg.trainer.precision == "32-true" and cfg.data.split_mode == "seg11valid"
    assert cfg.reference.mean.miou == miou and len(cfg.reference.weights_md5) == 32


def test_seed_recipes_follow_tf_image_segmentation():
    """tf-image-segmentation upsamples with a tf.constant bilinear filter (fixed) and pads to a
    multiple of 32 (TF-slim SAME convolutions): no caffe geometry."""
    for stride in (32, 16, 8):
        cfg = compose_config([f"experiment=fcn{stride}s_voc_aug"])
        assert cfg.model.upsampling == "fixed" and cfg.model.padding == "pad32" and cfg.module.loss_reduction == "mean"


def test_the_default_fcn_is_unchanged():
    """The default (learned, pad32, no skip scales) computes what FCN computed before these options:
    up(score_s32) + score_s16, up(.) + score_s8, up_final, on the input padded to a multiple of 32."""
    cfg = compose_config([])
    assert cfg.model.upsampling == "learned" and cfg.model.padding == "pad32" and cfg.model.skip_scales is None
    torch.manual_seed(0)
    model = FCN(C, 8, "resnet18").eval()
    for m in (model.score_s16, model.score_s8):  # non-zero skips, so that they count
        torch.nn.init.normal_(m.weight, std=0.1)
    x = torch.rand(1, 3, 45, 70)
    with torch.no_grad():
        padded = F.pad((x - model.mean) / model.std, (0, 26, 0, 19))
        feats = model.backbone(padded)
        score = model.up_s32(model.score_s32(feats["s32"])) + model.score_s16(feats["s16"])
        score = model.up_s16(score) + model.score_s8(feats["s8"])
        torch.testing.assert_close(model(x), model.up_final(score)[..., :45, :70], rtol=0, atol=0)


# --------------------------------------------------------------------------- evaluate only


def test_evaluate_only_needs_weights_and_judges_the_file_not_its_path(tmp_path):
    res = run_cli("train", "evaluate_only=true", f"paths.data_dir={tmp_path}", f"hydra.run.dir={tmp_path}/r", cwd=tmp_path)
    assert res.returncode == 1 and "evaluate_only=true evaluates the weights of model.init_from" in res.stderr
    # where the judged weights lie is no recipe change (their md5 is recorded); in a training recipe it is
    assert recipe_overrides(["model.init_from=/w/fcn8s_from_caffe.pth"], evaluate_only=True) == []
    assert recipe_overrides(["model.init_from=/w/x.ckpt"]) == ["model.init_from=/w/x.ckpt"]
    # and a verdict on other weights than the release is not recorded
    experiment = OmegaConf.create({"evaluate_only": True, "reference": {"weights_md5": "a" * 32}})
    assert "are not the released file" in not_recorded(experiment, ["model.init_from=/w/x.pth"],
                                                       [{"init_from_md5": "b" * 32}])
    assert not_recorded(experiment, ["model.init_from=/w/x.pth"], [{"init_from_md5": "a" * 32}]) is None
    assert not released_elsewhere({}, [{"init_from_md5": "b" * 32}])


@pytest.mark.slow  # VGG16 FCN-8s at the reference geometry, two CLI runs and a 540 MB checkpoint (~1 min)
def test_released_weights_are_evaluated_end_to_end(tmp_path):
    """`reproduce experiment=fcn8s_voc_released model.init_from=FILE` on a tiny VOC + SBD tree in the
    datasets' layouts, with reference-named weights: no training, the report, the md5, the verdict,
    and a checkpoint that `segframe.eval` scores the same and `segframe.predict` runs."""
    voc_root, sbd_root = make_voc(tmp_path / "raw", PT, PV), make_sbd(tmp_path / "raw", BT, BV)
    (tmp_path / "seg11.txt").write_text("pv_only\npv_bv\n")
    weights = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(reference_named(8, classes=21), weights)
    data = [f"data.voc_root={voc_root}", f"data.sbd_root={sbd_root}", "data.split_mode=seg11valid",
            f"data.seg11valid_list={tmp_path / 'seg11.txt'}", f"paths.data_dir={tmp_path / 'data'}"]
    assert run_cli("convert", "data=voc_aug", *data, cwd=tmp_path).returncode == 0
    res = run_cli("reproduce", "experiment=fcn8s_voc_released", f"model.init_from={weights}", f"out={tmp_path / 'runs'}",
                  *data, "datamodule.num_workers=0", "report.num_images=1", cwd=tmp_path)
    # random weights are far from 65.51: a miss; the test's own list is a recipe change, so nothing is recorded
    assert res.returncode == 1 and "outside the tolerance: ['miou']" in res.stderr, res.stdout[-3000:] + res.stderr
    run = tmp_path / "runs" / "fcn8s_voc_released" / "seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["fit_seconds"] == 0 and metrics["num_samples"] == 2
    assert metrics["init_from_md5"] == hashlib.md5(weights.read_bytes()).hexdigest()
    assert metrics["eval_seconds_per_image"] > 0 and metrics["speed_knobs"]["precision"] == "32-true"
    assert "not the released file's de93e540ec79512f8770033849c8ae89" in (run / "reproduce.log").read_text()
    assert metrics["checkpoint"] == str(run / "checkpoints" / "evaluated.ckpt")
    again = run_cli("eval", f"ckpt={metrics['checkpoint']}", f"paths.data_dir={tmp_path / 'data'}",
                    f"hydra.run.dir={tmp_path / 'eval'}", "datamodule.num_workers=0", "report.num_images=0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["miou"] == pytest.approx(metrics["miou"])
    image = next((voc_root / "JPEGImages").glob("pv_only.jpg"))
    shown = run_cli("predict", f"ckpt={metrics['checkpoint']}", f"input={image}", f"output={tmp_path / 'pred'}",
                    cwd=tmp_path)
    assert shown.returncode == 0 and (tmp_path / "pred" / "pv_only_mask.png").is_file(), shown.stderr[-3000:]
