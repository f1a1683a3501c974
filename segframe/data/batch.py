"""How samples become batches: a sample's arrays as tensors without copies, and the collate that
pads samples of different sizes into one batch (images 0, masks IGNORE_INDEX), keeping their memory
layout and dtypes. Used by SegDataModule's loaders and by the bench's per-file baseline."""

from __future__ import annotations

import numpy as np
import torch

from segframe.data.sample import IGNORE_INDEX


def as_tensors(image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(HxWx3 uint8, HxW uint8) arrays -> (uint8 [3,H,W] channels-last view, uint8 [H,W]), no copies:
    pad_collate copies each sample into its batch once, row by row. Masks stay uint8 (labels are < 256
    by the shard contract) until SegModule widens them on the device: the loader moves 8x fewer mask
    bytes than int64 and skips a per-sample int64 copy (~0.4 ms at 320x320)."""
    return _shared(image).permute(2, 0, 1), _shared(mask)


def _shared(array: np.ndarray) -> torch.Tensor:
    """The array as a tensor sharing its memory; copied only where torch cannot share it: negative
    strides (a flip's view) or read-only memory (PIL's np.asarray)."""
    if not array.flags.writeable or min(array.strides, default=0) < 0:
        array = array.copy()
    return torch.from_numpy(array)


def pad_collate(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack samples of different sizes: images padded with 0, masks with IGNORE_INDEX, dtypes kept.
    Images are [B,3,H,W] in the samples' memory layout: channels-last (as ShardStream yields them)
    stays channels-last, so every copy is contiguous (a HWC -> CHW transpose while batching costs
    ~0.17 ms per 320x320 sample); SegModule puts them in the layout its model runs in."""
    h = max(img.shape[1] for img, _ in batch)
    w = max(img.shape[2] for img, _ in batch)
    channels_last = batch[0][0].permute(1, 2, 0).is_contiguous() and not batch[0][0].is_contiguous()
    if channels_last:
        images = torch.zeros(len(batch), h, w, 3, dtype=batch[0][0].dtype).permute(0, 3, 1, 2)
    else:
        images = torch.zeros(len(batch), 3, h, w, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), h, w), IGNORE_INDEX, dtype=batch[0][1].dtype)
    for i, (img, mask) in enumerate(batch):
        images[i, :, : img.shape[1], : img.shape[2]] = img
        masks[i, : mask.shape[0], : mask.shape[1]] = mask
    return images, masks
