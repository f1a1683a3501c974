"""The `loss=` group: every loss against its formula written out here, ignored pixels change nothing,
all-ignore gives 0, class weights and reductions, argument checks, Hydra configs, SegModule wiring."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from segframe.engine import losses
from segframe.engine.losses import CeDice, CrossEntropy, Dice, Focal, Lovasz
from segframe.core.paths import CONF_DIR
from segframe.core.config import check_keys

from helpers.config import compose

C = 3
W = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B=2, C=3, 5x4 in float64: labels 0 and 1 only (class 2 absent), some pixels ignored."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 5, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 5, 4), generator=g)
    target[0, 0] = 255
    target[1, 2, 1:3] = 255
    return logits, target


def _pixels(logits: torch.Tensor, target: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """(probabilities [C], label) of each valid pixel."""
    probs = logits.softmax(1)
    return [(probs[b, :, i, j], int(target[b, i, j])) for b in range(target.shape[0])
            for i in range(target.shape[1]) for j in range(target.shape[2]) if target[b, i, j] != 255]


def _cross_entropy(logits, target, weight=None, reduction="mean"):
    terms = [(1.0 if weight is None else float(weight[y]), -float(torch.log(p[y]))) for p, y in _pixels(logits, target)]
    total = sum(w * t for w, t in terms)
    # sum: the FCN reference's un-normalised loss, per image (divided by the batch size)
    return total / sum(w for w, _ in terms) if reduction == "mean" else total / target.shape[0]


def _dice(logits, target, smooth=0.0):
    pixels = _pixels(logits, target)
    per_class = []
    for c in {y for _, y in pixels}:  # the classes present in the target
        inter = sum(float(p[c]) for p, y in pixels if y == c)
        card = sum(float(p[c]) for p, _ in pixels) + sum(1 for _, y in pixels if y == c)
        per_class.append(1 - (2 * inter + 2 * smooth) / (card + 2 * smooth))
    return sum(per_class) / len(per_class)


def _focal(logits, target, gamma=2.0, alpha=None, weight=None, reduction="mean"):
    total, norm = 0.0, 0.0
    for p, y in _pixels(logits, target):
        a = 1.0 if alpha is None else alpha[y]
        w = 1.0 if weight is None else float(weight[y])
        total += -a * w * (1 - float(p[y])) ** gamma * float(torch.log(p[y]))
        norm += w
    return total / norm if reduction == "mean" else total / target.shape[0]


def _lovasz(logits, target):
    """Lovász extension of the Jaccard set loss, from its definition (Berman et al. 2018, eq. 8-9):
    errors sorted decreasingly, each weighted by the increase of Delta_J(S) = |S| / |F u S| as
    its pixel joins the mispredicted set S (F: the class's ground-truth pixels)."""
    pixels = _pixels(logits, target)
    per_class = []
    for c in sorted({y for _, y in pixels}):
        errors = [abs((1.0 if y == c else 0.0) - float(p[c])) for p, y in pixels]
        truth = {k for k, (_, y) in enumerate(pixels) if y == c}
        order = sorted(range(len(pixels)), key=lambda k: -errors[k])
        loss, chosen, previous = 0.0, set(), 0.0
        for k in order:
            chosen.add(k)
            delta = len(chosen) / len(truth | chosen)
            loss += errors[k] * (delta - previous)
            previous = delta
        per_class.append(loss)
    return sum(per_class) / len(per_class)


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize("weight", [None, W])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_is_the_formula(weight, reduction):
    logits, target = _batch()
    got = CrossEntropy(weight=weight, reduction=reduction)(logits, target)
    assert float(got) == pytest.approx(_cross_entropy(logits, target, weight, reduction), rel=1e-6)


@pytest.mark.parametrize("loss", [CrossEntropy, Focal])
def test_summed_loss_is_per_image_as_the_reference(loss):
    """reduction="sum" is Caffe's SoftmaxWithLoss(normalize: false) and pytorch-fcn's `loss /= len(data)`:
    the sum over an image's valid pixels at batch 1, the mean of those per-image sums at batch 2, so the
    learning rate means the same at any batch size."""
    logits, target = _batch()
    per_image = [F.cross_entropy(logits[i:i + 1], target[i:i + 1], ignore_index=255, reduction="sum") for i in (0, 1)]
    if loss is Focal:
        per_image = [Focal(reduction="sum")(logits[i:i + 1], target[i:i + 1]) for i in (0, 1)]
    else:  # batch 1: the plain sum over the valid pixels
        assert float(loss(reduction="sum")(logits[:1], target[:1])) == pytest.approx(float(per_image[0]), rel=1e-12)
    both = loss(reduction="sum")(logits, target)
    assert float(both) == pytest.approx(float(per_image[0] + per_image[1]) / 2, rel=1e-12)
    assert float(both) != pytest.approx(float(per_image[0] + per_image[1]), rel=1e-3)  # not the batch's sum


@pytest.mark.parametrize("smooth", [0.0, 0.5])
def test_dice_is_the_mean_over_present_classes(smooth):
    logits, target = _batch()
    assert float(Dice(smooth=smooth)(logits, target)) == pytest.approx(_dice(logits, target, smooth), rel=1e-6)
    # one class present: the mean is over that one class, not divided by all 3
    one = torch.where(target == 255, target, torch.zeros_like(target))
    assert float(Dice()(logits, one)) == pytest.approx(_dice(logits, one), rel=1e-6)


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (0.5, [0.25, 1.0, 2.0]), (0.0, None)])
@pytest.mark.parametrize("weight", [None, W])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_focal_is_the_formula(gamma, alpha, weight, reduction):
    logits, target = _batch()
    got = Focal(weight=weight, reduction=reduction, gamma=gamma, alpha=alpha)(logits, target)
    assert float(got) == pytest.approx(_focal(logits, target, gamma, alpha, weight, reduction), rel=1e-6)
    if gamma == 0 and alpha is None:  # gamma 0 is cross entropy
        assert float(got) == pytest.approx(float(CrossEntropy(weight, reduction)(logits, target)), rel=1e-12)


def test_lovasz_is_the_extension_and_one_minus_iou_on_hard_predictions():
    logits, target = _batch()
    assert float(Lovasz()(logits, target)) == pytest.approx(_lovasz(logits, target), rel=1e-6)
    # on a confident (one-hot) prediction the extension is the Jaccard loss itself: mean 1 - IoU
    pred = torch.randint(0, C, target.shape, generator=torch.Generator().manual_seed(1))
    hard = 60.0 * torch.nn.functional.one_hot(pred, C).permute(0, 3, 1, 2).double()
    valid = target != 255
    ious = [float(((pred == c) & (target == c) & valid).sum() / (((pred == c) | (target == c)) & valid).sum())
            for c in target[valid].unique().tolist()]
    assert float(Lovasz()(hard, target)) == pytest.approx(1 - sum(ious) / len(ious), rel=1e-6)  # float32


@pytest.mark.parametrize("weight", [None, W])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_dice_is_the_weighted_sum(weight, reduction):
    logits, target = _batch()
    got = CeDice(weight=weight, reduction=reduction, ce_weight=0.7, dice_weight=2.0, smooth=0.5)(logits, target)
    expected = 0.7 * _cross_entropy(logits, target, weight, reduction) + 2.0 * _dice(logits, target, 0.5)
    assert float(got) == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- ignored pixels


ALL = [CrossEntropy(), CrossEntropy(W), Dice(), Dice(smooth=1.0), Focal(), Focal(W, alpha=[1.0, 2.0, 0.5]),
       Lovasz(), CeDice(W), CrossEntropy(W, "sum"), Focal(reduction="sum"), CeDice(reduction="sum")]


def _loss_and_grad(loss, logits, target):
    logits = logits.clone().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    return value.detach(), logits.grad


@pytest.mark.parametrize("loss", ALL, ids=lambda m: f"{type(m).__name__}")
def test_ignored_pixels_change_nothing(loss):
    logits, target = _batch()
    ignored = (target == 255).unsqueeze(1).expand_as(logits)
    value, grad = _loss_and_grad(loss, logits, target)
    changed = torch.where(ignored, 50 * torch.randn_like(logits), logits)  # arbitrary logits where ignored
    value2, grad2 = _loss_and_grad(loss, changed, target)
    torch.testing.assert_close(value2, value, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad2, grad, rtol=1e-12, atol=0)  # valid pixels' gradients unchanged
    assert (grad[ignored] == 0).all() and (grad[~ignored] != 0).any()  # ignored logits: zero gradient


@pytest.mark.parametrize("loss", ALL, ids=lambda m: f"{type(m).__name__}")
def test_all_ignore_gives_zero(loss):
    logits, target = _batch()
    value, grad = _loss_and_grad(loss, logits.float(), torch.full_like(target, 255))
    assert value.shape == () and float(value) == 0.0
    assert torch.isfinite(grad).all() and (grad == 0).all()


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("make, match", [
    (lambda: CrossEntropy(reduction="avg"), "module.loss_reduction must be 'mean' .* got 'avg'"),
    (lambda: Dice(reduction="sum"), "module.loss_reduction='sum' does not apply to loss=dice"),
    (lambda: Lovasz(reduction="sum"), "module.loss_reduction='sum' does not apply to loss=lovasz"),
    (lambda: Dice(weight=[1.0, 2.0, 3.0]), "module.class_weighting .* loss=dice"),
    (lambda: Lovasz(weight=[1.0, 2.0, 3.0]), "module.class_weighting .* loss=lovasz"),
    (lambda: Dice(smooth=-1), "loss.smooth must be a finite number >= 0, got -1"),
    (lambda: Focal(gamma=-0.5), "loss.gamma must be a finite number >= 0, got -0.5"),
    (lambda: Focal(gamma="2"), "loss.gamma must be a finite number >= 0, got '2'"),
    (lambda: Focal(alpha=0.25), "loss.alpha must be null or a list with one factor >= 0 per class, got 0.25"),
    (lambda: Focal(alpha=[1.0, -1.0, 1.0]), "every entry of loss.alpha must be a finite number >= 0, got -1.0"),
    (lambda: CeDice(ce_weight=0, dice_weight=0), "loss.ce_weight and loss.dice_weight are both 0"),
    (lambda: CeDice(dice_weight=float("nan")), "loss.dice_weight must be a finite number >= 0, got nan"),
    (lambda: losses.factory_from({"_target_": "os.system"}), "_target_ must be one of"),
])
def test_bad_arguments_are_refused_with_the_key(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_per_class_factors_must_match_the_classes():
    logits, target = _batch()
    with pytest.raises(ValueError, match="loss.alpha has 2 entries but the model predicts 3 classes"):
        Focal(alpha=[1.0, 2.0])(logits, target)


# --------------------------------------------------------------------------- configs


OPTIONS = sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml"))


def test_the_group_has_the_six_options_and_ce_is_the_default():
    assert OPTIONS == ["ce", "ce_dice", "dice", "focal", "log_jaccard", "lovasz"]
    assert compose([]).loss._target_ == "segframe.engine.losses.CrossEntropy"


@pytest.mark.parametrize("option", OPTIONS)
def test_every_loss_config_composes_and_instantiates(option):
    cfg = compose([f"loss={option}"])
    check_keys(cfg, "train")
    factory = instantiate(cfg.loss)
    loss = factory(weight=None, reduction="mean")
    assert type(loss) is losses.LOSSES[option]
    logits, target = _batch()
    assert torch.isfinite(loss(logits, target))
    config = losses.config_of(factory)  # plain, and rebuilds the same loss
    assert type(losses.factory_from(config)(weight=None, reduction="mean")) is type(loss)


def test_config_of_a_hydra_factory_is_plain(tmp_path):
    factory = instantiate(compose(["loss=focal", "loss.alpha=[0.25,1,1]", "loss.gamma=1.5"]).loss)
    config = losses.config_of(factory)
    assert config == {"_target_": "segframe.engine.losses.Focal", "_partial_": True, "gamma": 1.5, "alpha": [0.25, 1, 1]}
    torch.save(config, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True) == config
    assert losses.config_of(lambda **kw: CrossEntropy(**kw)) is None  # not storable: eval falls back to CE


# --------------------------------------------------------------------------- SegModule


class Tiny(torch.nn.Conv2d):
    """A 1x1 convolution taking the model keys eval adds (pretrained, init_from): fast to build."""

    def __init__(self, num_classes: int, pretrained: bool = False, init_from: str | None = None):
        super().__init__(3, num_classes, 1)


def _module(**kw):
    from segframe.engine.module import SegModule

    return SegModule(Tiny(C), functools.partial(torch.optim.SGD, lr=0.1), None, classes=["a", "b", "c"],
                     palette=[[0, 0, 0]] * C, model_config={"_target_": f"{__name__}.Tiny", "num_classes": C}, **kw)


def _previous_segmodule_loss(logits, masks, class_weight, reduction):
    """SegModule.loss before the loss group, verbatim but for sum, which is divided by the batch size
    since the reference-fidelity issue (Caffe's normalize: false): loss=ce must stay bit-identical."""
    loss = torch.nn.functional.cross_entropy(logits, masks, weight=class_weight, ignore_index=255, reduction="sum")
    if reduction == "mean":
        valid = masks != 255
        total = class_weight[masks[valid]].sum() if class_weight is not None else valid.sum()
        loss = loss / total.clamp_min(1e-12 if class_weight is not None else 1)
    else:
        loss = loss / logits.shape[0]
    return loss


@pytest.mark.parametrize("weighting", ["none", "median_frequency"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_segmodule_ce_is_bit_identical_to_before(weighting, reduction):
    module = _module(class_weighting=weighting, class_pixels=[600, 300, 100], loss_reduction=reduction,
                     loss=instantiate(compose(["loss=ce"]).loss))
    logits, target = (t.float() if t.is_floating_point() else t for t in _batch())
    assert torch.equal(module.loss(logits, target),
                       _previous_segmodule_loss(logits, target, module.class_weight, reduction))
    assert list(module.state_dict()) == ["model.weight", "model.bias"]  # the loss adds no checkpoint state


def test_segmodule_refuses_a_region_loss_with_sum_and_stores_a_plain_config():
    with pytest.raises(ValueError, match="module.loss_reduction='sum' does not apply to loss=dice"):
        _module(loss=functools.partial(Dice), loss_reduction="sum")
    assert isinstance(_module().criterion, CrossEntropy)  # no loss given: cross entropy
    module = _module(loss=functools.partial(Focal, gamma=1.0))
    assert "loss" not in module.hparams
    assert module.hparams["loss_config"] == {"_target_": "segframe.engine.losses.Focal", "_partial_": True, "gamma": 1.0}


def test_lightning_step_and_checkpoint_round_trip(tmp_path):
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint

    # summed and class-weighted: eval must rebuild the loss exactly as it was trained
    module = _module(loss=instantiate(compose(["loss=ce_dice", "loss.dice_weight=0.5"]).loss),
                     loss_reduction="sum", class_weighting="median_frequency", class_pixels=[100, 10, 1])
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, C, (2, 32, 32))
    masks[0, :8] = 255
    loader = DataLoader(TensorDataset(images, masks), batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=1, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, loader, loader)
    assert torch.isfinite(trainer.callback_metrics["train/loss"]) and "val/loss" in trainer.callback_metrics
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    restored = module_from_checkpoint(load_checkpoint(str(tmp_path / "x.ckpt")), {})  # weights_only load
    assert isinstance(restored.criterion, CeDice) and restored.criterion.dice_weight == 0.5
    module.eval()
    with torch.no_grad():
        logits = module(images)
        assert torch.equal(restored.loss(logits, masks), module.loss(logits, masks))
