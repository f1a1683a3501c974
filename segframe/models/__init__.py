"""Segmentation models: FCN-32s/16s/8s, dilated FCN, TernausNet, and segmentation_models_pytorch's
families, with their backbones and reference weights. Imports `core` and `data` only."""

from segframe.models.base import SegmentationModel, load_matching_weights
from segframe.models.fcn import FCN

__all__ = ["FCN", "SegmentationModel", "load_matching_weights"]
