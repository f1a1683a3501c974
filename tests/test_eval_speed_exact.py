"""The eval step's faster metric path (issue 16, "Eval") gives exactly the old integers:
labels() is torch.argmax(1), ties and dtypes included, and the confusion matrix / per-image
scores counted in place equal the gathered formula they replace. No timing here (see the bench)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from segframe.evaluation.metrics import ConfusionMatrix, PerImageScores, labels
from segframe.models.fcn import FCN
from segframe.engine.module import SegModule

VOID = 255
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _same_as_argmax(logits: torch.Tensor) -> None:
    got = labels(logits)
    assert got.shape == logits.shape[:1] + logits.shape[2:]
    assert torch.equal(got.long(), logits.argmax(1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(4, 21, 40, 48), (1, 2, 1, 1), (3, 5, 7, 13), (2, 150, 9, 11), (1, 255, 3, 5)])
def test_labels_equal_argmax_on_random_logits(dtype, channels_last, shape):
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    _same_as_argmax(logits)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_ties_go_to_the_first_maximal_class(dtype, channels_last):
    g = torch.Generator().manual_seed(1)
    # few distinct values: most pixels have 2+ channels sharing the maximum
    logits = torch.randint(-2, 3, (3, 21, 17, 19), generator=g).to(dtype)
    logits[0] = 0.5  # every class equal: class 0
    logits[1, :, 0, 0] = -float("inf")  # all -inf: class 0, as argmax
    logits[1, 3:7, 1, 1] = float("inf")  # +inf ties: the first
    logits[2, :, 2, 2] = -0.0
    logits[2, 4, 2, 2] = 0.0  # -0 == 0: a tie, the first wins
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    assert (logits == logits.amax(1, keepdim=True)).sum(1).gt(1).float().mean() > 0.5  # ties really are common
    _same_as_argmax(logits)
    assert labels(logits)[0].eq(0).all()


def test_nan_goes_to_the_first_nan_like_argmax():
    logits = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(2))
    logits[0, 4, 1, 1] = logits[0, 2, 1, 1] = float("nan")
    logits[1, 5, 0, 3] = float("nan")
    _same_as_argmax(logits)


def test_labels_are_small_integers_on_the_cpu_and_argmax_beyond_255_classes():
    assert labels(torch.randn(1, 21, 4, 4)).dtype == torch.uint8
    assert labels(torch.randn(1, 21, 4, 4).contiguous(memory_format=torch.channels_last)).dtype == torch.int64
    _same_as_argmax(torch.randn(2, 9, 10, 12)[:, :, 1::3, ::2])  # a strided view: the trick on any layout
    logits = torch.randn(1, 300, 3, 4, generator=torch.Generator().manual_seed(3))
    assert labels(logits).dtype == torch.int64 and torch.equal(labels(logits), logits.argmax(1))


def _gathered(preds: torch.Tensor, target: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula before issue 16: gather the valid pixels, one bincount for the dataset matrix and
    one over (image*C + gt)*C + pred for the per-image matrices [B, C, C]."""
    valid = target != VOID
    t, p = target[valid], preds.long()[valid]
    image = torch.arange(target.shape[0]).view(-1, 1, 1).expand_as(target)[valid]
    whole = torch.bincount(t * n + p, minlength=n * n).view(n, n)
    per_image = torch.bincount((image * n + t) * n + p, minlength=target.shape[0] * n * n).view(-1, n, n)
    return whole, per_image


def _per_image_states(per_image: torch.Tensor) -> dict[str, torch.Tensor]:
    """PerImageScores' states from per-image matrices, straight from its docstring's definitions."""
    cm = per_image.double()
    tp, total = cm.diagonal(dim1=1, dim2=2), cm.sum(2) + cm.sum(1)
    ternaus = {"ternaus_jaccard_sum": torch.zeros((), dtype=torch.float64),
               "ternaus_dice_sum": torch.zeros((), dtype=torch.float64)}
    for m in cm:  # TernausNet's per image: the foreground classes in its ground truth, else 1 or 0
        in_gt = [c for c in range(1, len(m)) if m[c].sum() > 0]
        empty = float(m[:, 1:].sum() == 0)
        g, p, t = m.sum(1), m.sum(0), m.diagonal()
        ternaus["ternaus_jaccard_sum"] += sum(t[c] / (g[c] + p[c] - t[c]) for c in in_gt) / len(in_gt) if in_gt else empty
        ternaus["ternaus_dice_sum"] += sum(2 * t[c] / (g[c] + p[c]) for c in in_gt) / len(in_gt) if in_gt else empty
    return {"dice_sum": (2 * tp / total.clamp_min(1)).sum(0), "iou_sum": (tp / (total - tp).clamp_min(1)).sum(0),
            "images": (total > 0).sum(0), **ternaus, "num_images": torch.tensor(len(cm))}


def _batch(batch: int, n: int, seed: int, present: int | None = None, void: float = 0.2) -> tuple:
    g = torch.Generator().manual_seed(seed)
    size = (batch, 23, 31)
    target = torch.randint(0, present or n, size, generator=g)  # classes >= present absent from the batch
    target[torch.rand(size, generator=g) < void] = VOID
    logits = torch.randn((batch, n) + size[1:], generator=g)
    if present:
        logits[:, present + 1:] -= 100  # the last classes are never predicted either
    return logits, target


@pytest.mark.parametrize("batch,n,present,void", [(4, 21, None, 0.2), (1, 21, None, 0.05), (3, 7, 4, 0.3),
                                                  (2, 2, None, 0.5), (1, 5, 2, 1.0)])
def test_counts_equal_the_gathered_formula(batch, n, present, void):
    confmat, image_scores, spy = ConfusionMatrix(n), PerImageScores(n), PerImageScores(n)
    per_image: list[torch.Tensor] = []
    spy._add_images = per_image.append  # the per-image matrices themselves, as the update counts them
    whole, states = torch.zeros(n, n, dtype=torch.long), {}
    for seed in range(3):  # batches accumulate
        logits, target = _batch(batch, n, seed, present, void)
        preds = labels(logits)
        confmat.update(preds, target)
        image_scores.update(preds, target)
        spy.update(preds, target)
        old_whole, old_per_image = _gathered(logits.argmax(1), target, n)
        whole += old_whole
        assert torch.equal(per_image[-1], old_per_image)
        for key, value in _per_image_states(old_per_image).items():  # summed batch by batch, as the metric
            states[key] = states.get(key, 0) + value
    assert confmat.compute().dtype == torch.int64 and torch.equal(confmat.compute(), whole)
    for key, value in image_scores.compute().items():
        if key.startswith("ternaus"):  # written out per image: the same values, summed in another order
            assert torch.allclose(value, states[key], rtol=1e-12, atol=0), key
        else:
            assert torch.equal(value, states[key]), key  # the same integers, so the same float sums


def test_logits_and_one_image_and_int_dtypes_count_alike():
    logits, target = _batch(2, 6, seed=7)
    by_logits, by_labels, by_long = ConfusionMatrix(6), ConfusionMatrix(6), ConfusionMatrix(6)
    by_logits.update(logits, target)
    by_labels.update(labels(logits), target.to(torch.uint8))  # uint8 masks: no uint8 overflow in gt*C
    by_long.update(logits.argmax(1), target)
    assert torch.equal(by_logits.compute(), by_long.compute()) and torch.equal(by_labels.compute(), by_long.compute())
    one, batched = PerImageScores(6), PerImageScores(6)
    one.update(logits[0], target[0])  # [C,H,W] logits of one image with a [H,W] mask
    batched.update(logits[:1], target[:1])
    for key, value in batched.compute().items():
        assert torch.equal(one.compute()[key], value), key


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_labels_outside_the_classes_are_refused_by_both_metrics(bad):
    target = torch.tensor([[[0, 1], [VOID, bad]]])
    for metric in (ConfusionMatrix(3), PerImageScores(3)):
        with pytest.raises(ValueError, match=f"target label {bad} is outside 0..2"):
            metric.update(torch.zeros(1, 2, 2, dtype=torch.long), target)


@pytest.mark.parametrize("channels_last", [False, True])
def test_segmodule_eval_and_test_steps_count_like_argmax(channels_last):
    """SegModule's validation step (logits) and multi-pass test step (averaged probabilities) give
    the states of torch.argmax + the gathered formula. Outside a Trainer, self.log only warns."""
    n = 5
    torch.manual_seed(0)
    module = SegModule(FCN(n, 32, "resnet18"), functools.partial(torch.optim.SGD, lr=0.1), None,
                       classes=list("abcde"), palette=[[0, 0, 0]] * n, inference={"flip": True},
                       channels_last=channels_last).eval()
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8)
    masks = torch.randint(0, n, (2, 40, 56))
    masks[:, :4] = VOID
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.validation_step((images, masks), 0)
        module.test_step((images, masks), 0)
        for stage, scores in (("val", module(images)), ("test", module.predict_scores(images))):
            whole, per_image = _gathered(scores.argmax(1), masks, n)
            assert torch.equal(getattr(module, f"{stage}_cm").compute(), whole), stage
            for key, value in _per_image_states(per_image).items():
                assert torch.equal(getattr(module, f"{stage}_img_scores").compute()[key], value), (stage, key)
