"""Checks of the arguments every loss takes (numbers, per-class factors), shared by losses.py and
jaccard_loss.py: a wrong value is refused when the loss is built, naming its key."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from segframe.core.errors import ConfigError


def check_number(key: str, value: Any, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum \
            or value == float("inf"):
        raise ConfigError(f"{key} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def class_factors(key: str, values: Any) -> torch.Tensor | None:
    """None, or a float32 tensor of one finite factor >= 0 per class (a list, tuple or tensor)."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ConfigError(f"{key} must be null or a list with one factor >= 0 per class, got {values!r}")
    for v in values:
        check_number(f"every entry of {key}", v)
    return torch.tensor([float(v) for v in values], dtype=torch.float32)
