"""Learning-rate schedules torch does not ship: poly decay after a linear warmup."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from segframe.core.errors import ConfigError


class WarmupPoly(LambdaLR):
    """lr x min(1, (step + 1) / warmup_iters) x (1 - step / total_iters) ^ power, stepped every
    iteration. The warmup matters when training starts from scratch with batch norm and a large
    Adam step: measured on shapes (FCN-8s ResNet-18, AdamW 4e-3, batch 16, 120 s), 50 warmup steps
    gave 70.2 mIoU and none 59.6 (one seed each, a plain training loop over the same data).
    `total_iters` is the run's optimizer steps (SegModule fills it in when it is null)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_iters: int, warmup_iters: int = 0,
                 power: float = 0.9, last_epoch: int = -1):
        if int(total_iters) < 1:
            raise ConfigError(f"scheduler.total_iters must be >= 1, got {total_iters}")
        if int(warmup_iters) < 0 or int(warmup_iters) >= int(total_iters):
            raise ConfigError(f"scheduler.warmup_iters must be in 0..total_iters-1 ({int(total_iters) - 1}), got "
                              f"{warmup_iters}: this run has {int(total_iters)} optimizer steps; lower "
                              f"scheduler.warmup_iters or train longer (trainer.max_epochs / trainer.max_steps)")
        if power <= 0:
            raise ConfigError(f"scheduler.power must be > 0, got {power}")
        self.total_iters, self.warmup_iters, self.power = int(total_iters), int(warmup_iters), float(power)
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_iters) if self.warmup_iters else 1.0
        return warmup * (1.0 - min(step, self.total_iters) / self.total_iters) ** self.power
