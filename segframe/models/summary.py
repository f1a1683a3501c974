"""How big a model is: parameters, and FLOPs of one forward pass (docs/models.md, and the comparison in docs/reproducing.md)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_count(model: nn.Module, trainable_only: bool = False) -> int:
    """All parameters, or those that train (smp freezes stages an architecture never runs)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def gflops(model: nn.Module, height: int, width: int) -> float:
    """GFLOPs of one forward pass on one height x width image, counted by torch's FlopCounterMode:
    a multiply-add is 2 FLOPs (papers that count multiply-adds report half of this)."""
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, height, width))
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
