"""The training loss: mean over valid pixels or summed, optionally class-weighted from the manifest."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from segframe.models.fcn import FCN
from segframe.engine.module import SegModule, class_weights


def test_median_frequency_and_inverse_frequency_weights():
    pixels = [600, 300, 100, 0]  # frequencies 0.6, 0.3, 0.1; the last class never appears
    assert class_weights(pixels, "none") is None
    med = class_weights(pixels, "median_frequency")
    assert med == pytest.approx([0.5, 1.0, 3.0, 1.0])  # median(f) / f_c
    inv = class_weights(pixels, "inverse_frequency")
    assert inv[:3] == pytest.approx([x / ((1 / 0.6 + 1 / 0.3 + 1 / 0.1) / 3) for x in (1 / 0.6, 1 / 0.3, 1 / 0.1)])
    assert inv[3] == 1.0
    with pytest.raises(ValueError, match="class_weighting must be one of"):
        class_weights(pixels, "balanced")


def _module(**kw) -> SegModule:
    return SegModule(FCN(3, 32, "resnet18"), functools.partial(torch.optim.SGD, lr=0.1), None,
                     classes=["a", "b", "c"], palette=[[0, 0, 0]] * 3, **kw)


def test_weighted_loss_is_weighted_sum_over_valid_pixels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    masks = torch.randint(0, 3, (2, 5, 6))
    masks[0, 0] = 255
    weighted = _module(class_weighting="median_frequency", class_pixels=[600, 300, 100])
    w = torch.tensor([0.5, 1.0, 3.0])
    per_pixel = F.cross_entropy(logits, masks, weight=w, ignore_index=255, reduction="none")
    expected_weighted = F.cross_entropy(logits, masks, weight=w, ignore_index=255)  # torch: sum / sum of weights
    assert weighted.loss(logits, masks) == pytest.approx(float(expected_weighted), rel=1e-5)
    assert float(expected_weighted) != pytest.approx(float(per_pixel.sum() / (masks != 255).sum()), rel=1e-3)
    all_void = torch.full_like(masks, 255)
    assert float(weighted.loss(logits, all_void)) == 0.0 and float(_module().loss(logits, all_void)) == 0.0
    plain = _module()
    expected = F.cross_entropy(logits, masks, ignore_index=255)  # torch's mean is over valid pixels too
    assert plain.loss(logits, masks) == pytest.approx(float(expected), rel=1e-5)
    assert "class_weight" not in weighted.state_dict()  # rebuilt from the hparams, not stored twice
