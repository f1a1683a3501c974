"""Dense-CRF refinement (eval.crf): it moves a blurred, misplaced boundary onto the image's colour
edge, and it is refused with the install command when the extra is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segframe.evaluation import crf
from segframe.core.errors import ConfigError
from segframe.evaluation.inference import check_options, infer

NEEDS_CRF = pytest.mark.skipif(crf.available() is not None, reason="the crf extra (pydensecrf2) is not installed: "
                               "pip install \"segframe[crf]\"")


def _blurred_boundary(h: int = 40, w: int = 64, edge: int = 32, predicted_edge: int = 26):
    """An image whose colour changes at column `edge`, and scores of 2 classes whose (soft) boundary
    sits at `predicted_edge`: what an upsampled stride-32 prediction looks like next to a sharp edge."""
    image = torch.zeros(1, 3, h, w)
    image[..., edge:] = 1.0
    cols = torch.arange(w, dtype=torch.float32)
    p1 = torch.sigmoid((cols - predicted_edge) / 3.0).expand(h, w)
    scores = torch.stack([(1 - p1).log(), p1.log()])[None]  # log-probabilities [1, 2, H, W]
    truth = (cols >= edge).long().expand(h, w)
    return image, scores, truth


@NEEDS_CRF
def test_crf_moves_a_blurred_boundary_onto_the_colour_edge():
    image, scores, truth = _blurred_boundary()
    before = (scores.argmax(1)[0] != truth).float().mean().item()
    refined = infer(lambda x: scores, image, crf=True)
    after = (refined.argmax(1)[0] != truth).float().mean().item()
    assert before == 5 / 64 and after < 1 / 64, (before, after)  # columns 27..31 wrong before; none after
    assert refined.shape == scores.shape and torch.allclose(refined.exp().sum(1), torch.ones(1, 40, 64), atol=1e-4)


@NEEDS_CRF
def test_crf_leaves_a_prediction_that_agrees_with_the_image():
    image, _, truth = _blurred_boundary()
    confident = torch.stack([(truth == 0).float(), (truth == 1).float()])[None] * 8.0  # logits
    assert torch.equal(infer(lambda x: confident, image, crf=True).argmax(1)[0], truth)


def test_crf_settings_are_checked_before_any_work(monkeypatch):
    if crf.available() is None:
        with pytest.raises(ConfigError, match="eval.crf_iterations must be a positive integer"):
            check_options(crf=True, crf_iterations=0)
        with pytest.raises(ConfigError, match="unknown CRF option"):
            check_options(crf=True, crf_theta=1)
    monkeypatch.setattr(crf, "available", lambda: "eval.crf=true needs pydensecrf2 ...; pip install \"segframe[crf]\"")
    with pytest.raises(ConfigError, match=r'pip install "segframe\[crf\]"'):
        check_options(crf=True)
    check_options(crf=False, **crf.DEFAULTS)  # off: its settings may stay in the config


def test_crf_refines_probabilities_per_image():
    if crf.available() is not None:
        pytest.skip("the crf extra (pydensecrf2) is not installed")
    image, scores, _ = _blurred_boundary()
    batch = crf.refine(scores.repeat(2, 1, 1, 1), image.repeat(2, 1, 1, 1))
    assert batch.shape == (2, 2, 40, 64) and torch.equal(batch[0], batch[1])
    assert np.isfinite(batch.numpy()).all()
