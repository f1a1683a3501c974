"""loss=log_jaccard (segframe/engine/jaccard_loss.py) against TernausNet's loss.py (ternaus/robot-surgery-segmentation)
written out here: LossBinary on the logit l1 - l0 for classes=foreground, LossMulti on log_softmax for
classes=all; ignored pixels, class weights, argument checks, training, Hydra and checkpoint configs."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from segframe.engine import losses
from segframe.core.config import check_keys
from segframe.core.errors import ConfigError
from segframe.engine.jaccard_loss import LogJaccard

from helpers.config import compose

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: small tensors run faster on one thread

EPS = 1e-15
WEIGHTS = [0.0, 0.3, 1.0]


def reference_binary(outputs: torch.Tensor, targets: torch.Tensor, jaccard_weight: float) -> torch.Tensor:
    """LossBinary: one logit per pixel, float targets 0/1; BCE mean, Jaccard over the whole batch."""
    loss = (1 - jaccard_weight) * F.binary_cross_entropy_with_logits(outputs, targets)
    if jaccard_weight:
        jaccard_target = (targets == 1).to(outputs.dtype)
        jaccard_output = torch.sigmoid(outputs)
        intersection = (jaccard_output * jaccard_target).sum()
        union = jaccard_output.sum() + jaccard_target.sum()
        loss = loss - jaccard_weight * torch.log((intersection + EPS) / (union - intersection + EPS))
    return loss


def reference_multi(outputs: torch.Tensor, targets: torch.Tensor, jaccard_weight: float, num_classes: int,
                    class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """LossMulti: log_softmax outputs [N,C,...], NLL mean (class-weighted as NLLLoss), and the log Jaccard
    of every class summed, absent ones included."""
    loss = (1 - jaccard_weight) * F.nll_loss(outputs, targets, weight=class_weights)
    if jaccard_weight:
        for cls in range(num_classes):
            jaccard_target = (targets == cls).to(outputs.dtype)
            jaccard_output = outputs[:, cls].exp()
            intersection = (jaccard_output * jaccard_target).sum()
            union = jaccard_output.sum() + jaccard_target.sum()
            loss = loss - torch.log((intersection + EPS) / (union - intersection + EPS)) * jaccard_weight
    return loss


def _batch(num_classes: int, dtype=torch.float64, seed: int = 0, labels: int | None = None):
    """B=2, 6x5 logits and labels 0..labels-1 (all classes by default), some pixels ignored (255)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 6, 5, generator=g, dtype=torch.float64).mul(2).to(dtype)
    target = torch.randint(0, labels or num_classes, (2, 6, 5), generator=g)
    target[0, 0] = 255
    target[1, 3, 1:4] = 255
    return logits, target


def _valid(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C] logits and [N] labels of the valid pixels: the reference has no ignore label, and with its
    sums and means over pixels, dropping a pixel is what ignoring it means."""
    valid = target != 255
    return logits.movedim(1, -1)[valid], target[valid]


@pytest.mark.parametrize("w", WEIGHTS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_foreground_is_loss_binary_on_l1_minus_l0(w, dtype, tol):
    logits, target = _batch(2, dtype)
    scores, labels = _valid(logits.double(), target)
    expected = reference_binary(scores[:, 1] - scores[:, 0], labels.double(), w)
    got = LogJaccard(jaccard_weight=w, classes="foreground")(logits, target)
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("w", WEIGHTS)
def test_all_is_loss_multi_on_log_softmax(w):
    logits, target = _batch(4, labels=3)  # class 3 absent from the target
    scores, labels = _valid(logits, target)
    expected = reference_multi(F.log_softmax(scores, 1), labels, w, 4)
    torch.testing.assert_close(LogJaccard(jaccard_weight=w)(logits, target), expected, rtol=1e-12, atol=1e-12)
    if w:  # the absent class is not masked out: without its term the loss would be smaller
        present_only = expected + w * torch.log(EPS / (scores.softmax(1)[:, 3].sum() + EPS))
        assert present_only < expected - 1


def test_without_ignored_pixels_the_reference_applies_to_the_whole_maps():
    logits, target = _batch(3)
    target[target == 255] = 1
    expected = reference_multi(F.log_softmax(logits, 1), target, 0.3, 3)  # NLLLoss2d on [B,C,H,W]
    torch.testing.assert_close(LogJaccard()(logits, target), expected, rtol=1e-12, atol=1e-12)


def test_class_weights_weigh_the_cross_entropy_term():
    logits, target = _batch(3)
    weight = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    scores, labels = _valid(logits, target)
    expected = reference_multi(F.log_softmax(scores, 1), labels, 0.3, 3, class_weights=weight)
    torch.testing.assert_close(LogJaccard(weight=weight.tolist())(logits, target), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("classes", ["all", "foreground"])
def test_ignored_pixels_change_nothing_and_get_no_gradient(classes):
    logits, target = _batch(2)
    loss = LogJaccard(jaccard_weight=0.3, classes=classes)
    wild = logits.clone()
    ignored = (target == 255)[:, None].expand_as(wild)
    wild[ignored] = torch.tensor([float("nan"), float("inf"), -float("inf")], dtype=wild.dtype).repeat(
        int(ignored.sum()) // 3 + 1)[: int(ignored.sum())]
    wild.requires_grad_(True)
    value = loss(wild, target)
    value.backward()
    torch.testing.assert_close(value.detach(), loss(logits, target), rtol=0, atol=0)
    assert torch.isfinite(wild.grad).all() and not wild.grad[ignored].any() and wild.grad[~ignored].any()


@pytest.mark.parametrize("w", WEIGHTS)
def test_an_all_ignored_batch_gives_zero(w):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    value = LogJaccard(jaccard_weight=w)(logits, torch.full((2, 4, 4), 255))
    value.backward()
    assert value.item() == 0 and not logits.grad.any()


def test_gradients_are_the_formulas():
    logits, target = _batch(3, seed=1)
    for classes, num in (("all", 3), ("foreground", 2)):
        x = logits[:, :num].clone().requires_grad_(True)
        assert torch.autograd.gradcheck(LogJaccard(jaccard_weight=0.3, classes=classes), (x, target.clamp_max(num - 1)))


@pytest.mark.parametrize("classes, w", [("all", 0.3), ("foreground", 0.3), ("all", 1.0)])
def test_it_trains(classes, w):
    """A 1x1 convolution learns to tell bright pixels (class 1) from dark ones: the loss falls step by step."""
    torch.manual_seed(0)
    images = torch.rand(4, 3, 8, 8)
    target = (images.mean(1) > 0.5).long()
    target[0, :2] = 255
    model = torch.nn.Conv2d(3, 2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = LogJaccard(jaccard_weight=w, classes=classes)
    values = []
    for _ in range(30):
        optimizer.zero_grad()
        value = loss(model(images), target)
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert all(b < a for a, b in zip(values, values[1:])) and values[-1] < 0.75 * values[0]  # measured 0.54-0.66


@pytest.mark.parametrize("make, match", [
    (lambda: LogJaccard(reduction="sum"), "module.loss_reduction='sum' does not apply to loss=log_jaccard"),
    (lambda: LogJaccard(jaccard_weight=1.5), "loss.jaccard_weight must be a number in \\[0, 1\\].*got 1.5"),
    (lambda: LogJaccard(jaccard_weight="0.3"), "loss.jaccard_weight must be a number"),
    (lambda: LogJaccard(classes="background"), "loss.classes must be one of \\('all', 'foreground'\\)"),
    (lambda: LogJaccard(eps=0), "loss.eps must be a number in \\(0, 1\\)"),
    (lambda: LogJaccard(weight=[1.0, -1.0]), r"every entry of the class weights \(module.class_weighting\) must be a finite number >= 0"),
    (lambda: LogJaccard(classes="foreground")(*_batch(3)), "loss.classes=foreground .* predicts 3 classes"),
    (lambda: LogJaccard(weight=[1.0, 2.0])(*_batch(3)), "class weights .* have 2 entries .* predicts 3 classes"),
])
def test_bad_arguments_are_refused_with_the_key(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


# --------------------------------------------------------------------------- configs, SegModule, checkpoints


class Tiny(torch.nn.Conv2d):
    """A 1x1 convolution taking the model keys eval adds (pretrained, init_from)."""

    def __init__(self, num_classes: int, pretrained: bool = False, init_from: str | None = None):
        super().__init__(3, num_classes, 1)


def _module(**kw):
    from segframe.engine.module import SegModule

    return SegModule(Tiny(2), functools.partial(torch.optim.SGD, lr=0.1), None, classes=["background", "tool"],
                     palette=[[0, 0, 0], [255, 255, 255]], model_config={"_target_": f"{__name__}.Tiny",
                                                                         "num_classes": 2}, **kw)


def test_the_config_instantiates_the_defaults():
    cfg = compose(["loss=log_jaccard"])
    check_keys(cfg, "train")
    loss = instantiate(cfg.loss)(weight=None, reduction="mean")
    assert isinstance(loss, LogJaccard)
    assert (loss.jaccard_weight, loss.classes, loss.eps) == (0.3, "all", 1e-15)
    loss = instantiate(compose(["loss=log_jaccard", "loss.classes=foreground", "loss.jaccard_weight=1"]).loss)(
        weight=None, reduction="mean")
    assert (loss.jaccard_weight, loss.classes) == (1.0, "foreground")


def test_segmodule_builds_it_and_refuses_sum(tmp_path):
    factory = instantiate(compose(["loss=log_jaccard"]).loss)
    with pytest.raises(ConfigError, match="module.loss_reduction='sum' does not apply to loss=log_jaccard"):
        _module(loss=factory, loss_reduction="sum")
    module = _module(loss=factory, class_weighting="median_frequency", class_pixels=[900, 100])
    assert isinstance(module.criterion, LogJaccard) and module.criterion.weight is not None
    torch.save(dict(module.hparams), tmp_path / "hparams.pt")  # a checkpoint's hparams: plain data
    torch.load(tmp_path / "hparams.pt", weights_only=True)


@pytest.mark.xfail(LogJaccard not in losses.LOSSES.values(), strict=True,
                   reason="segframe.engine.losses does not list LogJaccard among its storable losses yet (config_of gives None: "
                          "eval would rebuild cross entropy for the val/test loss)")
def test_a_checkpoint_rebuilds_the_same_loss(tmp_path):
    factory = instantiate(compose(["loss=log_jaccard", "loss.classes=foreground", "loss.jaccard_weight=1"]).loss)
    config = losses.config_of(factory)
    assert config == {"_target_": "segframe.engine.jaccard_loss.LogJaccard", "_partial_": True, "jaccard_weight": 1,
                      "classes": "foreground", "eps": 1e-15}
    torch.save(config, tmp_path / "c.pt")
    restored = losses.factory_from(torch.load(tmp_path / "c.pt", weights_only=True))(weight=None, reduction="mean")
    assert isinstance(restored, LogJaccard) and (restored.jaccard_weight, restored.classes) == (1.0, "foreground")
    module = _module(loss=factory)
    rebuilt = _module(loss_config=module.hparams["loss_config"])
    logits, target = _batch(2, torch.float32)
    assert isinstance(rebuilt.criterion, LogJaccard)
    assert torch.equal(rebuilt.criterion(logits, target), module.criterion(logits, target))
