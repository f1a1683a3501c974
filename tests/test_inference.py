"""Test-time inference: sliding windows stitch exactly, scales and flips keep shapes and agree
with whole-image inference where the model allows it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segframe.evaluation.inference import infer, slide, window_starts
from segframe.models.fcn import FCN


def _pointwise(num_classes: int = 4) -> nn.Module:
    """A per-pixel model: exactly translation- and mirror-equivariant."""
    torch.manual_seed(0)
    return nn.Conv2d(3, num_classes, 1).eval()


def test_window_starts_cover_the_axis_and_end_flush():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(4, 8, 3) == [0]
    for size, crop, stride in [(37, 16, 16), (100, 32, 21), (33, 32, 1)]:
        starts = window_starts(size, crop, stride)
        covered = set()
        for s in starts:
            covered.update(range(s, s + crop))
        assert covered == set(range(size)) and starts[-1] == size - crop


def test_slide_stitches_to_the_whole_image_result():
    model = _pointwise()
    x = torch.rand(2, 3, 45, 70)
    with torch.no_grad():
        whole = model(x)
        assert torch.allclose(slide(model, x, crop=16, stride=11), whole, atol=1e-6)
        assert torch.allclose(infer(model, x, mode="slide", crop=16, stride=16), whole, atol=1e-6)


def test_flip_and_scales_on_an_equivariant_model():
    model = _pointwise()
    x = torch.rand(1, 3, 24, 30)
    with torch.no_grad():
        probs = model(x).softmax(1)
        assert torch.allclose(infer(model, x, flip=True), probs, atol=1e-6)  # mirrored back exactly
        constant = torch.full((1, 3, 24, 30), 0.3)
        tta = infer(model, constant, scales=[0.5, 1.0, 1.5], flip=True)
        assert torch.allclose(tta, model(constant).softmax(1), atol=1e-5)


@pytest.mark.parametrize("options", [
    {"scales": [0.5, 1.25], "flip": True},
    {"mode": "slide", "crop": 32, "stride": 20},
    {"mode": "slide", "crop": 32, "stride": 32, "scales": [0.75, 1.0], "flip": True},
])
def test_shapes_and_probabilities_on_a_random_fcn(options):
    torch.manual_seed(0)
    model = FCN(5, 8, "resnet18").eval()
    x = torch.rand(2, 3, 45, 70)
    with torch.no_grad():
        scores = infer(model, x, **options)
    assert scores.shape == (2, 5, 45, 70)
    if options.get("scales") or options.get("flip"):  # averaged probabilities
        assert torch.allclose(scores.sum(1), torch.ones(2, 45, 70), atol=1e-5)


def test_a_single_whole_pass_returns_the_logits():
    model = _pointwise()
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.equal(infer(model, x), model(x))


@pytest.mark.parametrize("options, message", [
    ({"mode": "slid"}, "eval.mode must be one of"),
    ({"scales": [1.0, 0.0]}, "eval.scales must be a list of positive factors"),
    ({"scales": 1.0}, r"eval.scales must be a list .* got 1.0"),
    ({"mode": "slide", "crop": 32, "stride": 40}, "eval.stride must be in 1..eval.crop"),
])
def test_bad_options_are_refused_before_any_work(options, message):
    import functools

    from segframe.engine.module import SegModule

    with pytest.raises(ValueError, match=message):
        SegModule(_pointwise(), functools.partial(torch.optim.SGD, lr=0.1), None, ["a"] * 4, [[0, 0, 0]] * 4,
                  inference=options)
