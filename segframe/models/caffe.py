"""The reference FCN nets' geometry (fcn.berkeleyvision.org, `model.padding=caffe`): the input is padded
by 100 px in conv1_1, pooling rounds up, fc6 is a valid 7x7 convolution, the upsamplers have no
padding, and Crop layers cut each skip and the output out of larger maps at fixed offsets.

Caffe finds those offsets itself (its coord_map.py): every layer maps a coordinate of its input to
one of its output, y = a * x + b, and a crop between two blobs that share the scale `a` starts at
the difference of their `b`. The same rule is written here, so the offsets follow from the layers
rather than being typed in: they come out as the reference's 5 (pool4), 9 (pool3) and 19 / 27 / 31
(the FCN-32s / 16s / 8s output), which pytorch-fcn also writes down.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction

import torch
from torch import nn

Map = tuple[Fraction, Fraction]  # y = a * x + b, from the input image's coordinates to a blob's
IDENTITY: Map = (Fraction(1), Fraction(0))
CONV1_PAD = 100  # conv1_1's padding in the reference: any input leaves pool5 >= 7x7 for the valid fc6


def _pair(value: int | tuple[int, ...]) -> int:
    # the reference's layers are square; the geometry of one axis is the geometry of both
    return int(value[0] if isinstance(value, tuple) else value)


def layer_map(layer: nn.Module) -> Map:
    """One layer's coordinate map (Caffe's coord_map): a convolution or pooling of kernel k, stride s
    and padding p maps x to (x + p - (k - 1) / 2) / s, a deconvolution maps x to s * x + (k - 1) / 2 - p;
    element-wise layers (ReLU, dropout) keep coordinates."""
    if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
        k, s, p = (_pair(getattr(layer, n)) for n in ("kernel_size", "stride", "padding"))
        return Fraction(1, s), Fraction(2 * p - (k - 1), 2 * s)
    if isinstance(layer, nn.ConvTranspose2d):
        k, s, p = (_pair(getattr(layer, n)) for n in ("kernel_size", "stride", "padding"))
        return Fraction(s), Fraction(k - 1, 2) - p
    return IDENTITY


def compose(first: Map, layers: Iterable[nn.Module]) -> Map:
    """The map after `layers`, applied in order to a blob whose map is `first`."""
    a, b = first
    for layer in layers:
        la, lb = layer_map(layer)
        a, b = la * a, la * b + lb
    return a, b


def crop_offset(blob: Map, reference: Map) -> int:
    """Where a crop of `blob` to `reference`'s size starts (Caffe's Crop layer with offsets from
    coord_map): both must have the same scale, and their shift must be a whole number of pixels."""
    shift = blob[1] - reference[1]
    if blob[0] != reference[0] or shift.denominator != 1 or shift < 0:
        # as Caffe's crop asserts: the same scale, a whole shift, and the reference inside the blob
        raise ValueError(f"cannot align a blob mapped as {blob} with one mapped as {reference}")
    return int(shift)


def crop_like(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """x[..., offset:offset + height, offset:offset + width] (the reference crops both axes alike)."""
    return x[..., offset:offset + height, offset:offset + width]
