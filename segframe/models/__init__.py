"""Segmentation models: FCN-32s/16s/8s on VGG16 / ResNet backbones."""

from segframe.models.fcn import FCN, load_matching_weights

__all__ = ["FCN", "load_matching_weights"]
