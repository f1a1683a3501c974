"""Dense-CRF refinement of class probabilities: the fully connected CRF of Krähenbühl and Koltun
("Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NIPS 2011), as
DeepLab (Chen et al., ICLR 2015) applied it to a CNN's softmax. A smoothness kernel (position only)
removes isolated pixels; an appearance kernel (position and colour) pulls a label boundary onto
the image's colour edge, which the network's stride-8..32 upsampling blurs.

The mean-field inference is pydensecrf's (`pip install "segframe[crf]"`: the pydensecrf2 package,
built from source with the machine's C++ compiler). Defaults are pydensecrf's own example values.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from segframe.core.errors import ConfigError

# eval.crf_* keys and their defaults: (iterations, smoothness kernel, appearance kernel)
DEFAULTS = {"crf_iterations": 5, "crf_gaussian_sxy": 3.0, "crf_gaussian_compat": 3.0,
            "crf_bilateral_sxy": 80.0, "crf_bilateral_srgb": 13.0, "crf_bilateral_compat": 10.0}


def available() -> str | None:
    """None when the CRF can run here, else why not (with the command that installs it)."""
    try:  # an optional extra: imported only when asked for
        importlib.import_module("pydensecrf.densecrf")
    except ImportError as exc:
        return (f"eval.crf=true needs pydensecrf2, which is not installed ({exc}); install the extra: "
                f"pip install \"segframe[crf]\" (it builds from source: a C++ compiler is needed)")
    return None


def check(**options: float) -> None:
    """Refuse CRF settings that cannot work, and a missing extra, before any work."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown CRF option(s) {unknown}; known: {sorted(DEFAULTS)}")
    for key, value in options.items():
        if not isinstance(value, (int, float)) or value <= 0 or (key == "crf_iterations" and int(value) != value):
            raise ConfigError(f"eval.{key} must be a positive {'integer' if key == 'crf_iterations' else 'number'}, "
                              f"got {value!r}")
    problem = available()
    if problem:
        raise ConfigError(problem)


def refine_one(probs: np.ndarray, image: np.ndarray, crf_iterations: int = 5, crf_gaussian_sxy: float = 3.0,
               crf_gaussian_compat: float = 3.0, crf_bilateral_sxy: float = 80.0, crf_bilateral_srgb: float = 13.0,
               crf_bilateral_compat: float = 10.0) -> np.ndarray:
    """Refined probabilities [C, H, W] (float32) of one image from its softmax `probs` [C, H, W]
    and its pixels `image` [H, W, 3] uint8 RGB."""
    import pydensecrf.densecrf as dcrf  # the optional extra, checked by check()

    c, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, c)
    # unary = -log p; the floor keeps log finite where the softmax underflowed to 0
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-8, 1.0)).reshape(c, -1), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=crf_gaussian_sxy, compat=crf_gaussian_compat)
    crf.addPairwiseBilateral(sxy=crf_bilateral_sxy, srgb=crf_bilateral_srgb, rgbim=np.ascontiguousarray(image),
                             compat=crf_bilateral_compat)
    return np.asarray(crf.inference(int(crf_iterations)), dtype=np.float32).reshape(c, h, w)


def refine(scores: torch.Tensor, x: torch.Tensor, **options: float) -> torch.Tensor:
    """Class scores [B, C, H, W] refined image by image; `x` [B, 3, H, W] is the model's input
    (RGB in [0, 1]). Returns log-probabilities, so that softmax and argmax read them as before."""
    probs = scores.float().softmax(1).cpu().numpy()
    images = (x.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    refined = np.stack([refine_one(p, im, **{**DEFAULTS, **options}) for p, im in zip(probs, images)])
    return torch.from_numpy(refined).clamp_min(1e-8).log().to(scores.device)
