"""Evaluation cost: what SegModule's eval step adds to the forward pass for the metric, i.e.
`logits.argmax(1)` and `ConfusionMatrix.update` (ignore mask, bincount over gt*C+pred), as a
fraction of the forward pass on the same eval batch (inference mode, as Lightning validates)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from segframe.bench.common import fmt, median, table, timed
from segframe.bench.step import make_batch
from segframe.metrics import ConfusionMatrix
from segframe.models.fcn import FCN
from segframe.models.base import to_input


@dataclass
class EvalRow:
    model: str
    batch: int
    height: int
    width: int
    forward_ms: float = math.nan
    argmax_ms: float = math.nan
    update_ms: float = math.nan
    forward_reps: int = 0
    metric_reps: int = 0

    @property
    def fraction(self) -> float:
        """(argmax + confusion-matrix update) / forward."""
        return (self.argmax_ms + self.update_ms) / self.forward_ms


def _time(fn, device: torch.device, reps: int) -> float:
    """Median ms of `reps` calls of fn()."""
    return 1000 * median([timed(fn, device) for _ in range(reps)])


def bench_eval(backbone: str, batch: int, height: int, width: int, device: torch.device, classes: int = 21,
               stride: int = 8, forward_reps: int = 3, metric_reps: int = 20) -> EvalRow:
    torch.manual_seed(0)
    model = FCN(classes, stride, backbone, pretrained=False).to(device).eval()
    images, masks = make_batch(batch, height, classes, device, width=width)
    metric = ConfusionMatrix(classes).to(device)
    row = EvalRow(backbone, batch, height, width, forward_reps=forward_reps, metric_reps=metric_reps)
    with torch.inference_mode():
        out: dict[str, torch.Tensor] = {}

        def forward() -> None:
            out["logits"] = model(to_input(images))  # as SegModule.forward

        forward()  # warm-up
        row.forward_ms = _time(forward, device, forward_reps)
        logits = out["logits"]
        preds = logits.argmax(1)
        metric.update(preds, masks)
        row.argmax_ms = _time(lambda: logits.argmax(1), device, metric_reps)
        row.update_ms = _time(lambda: metric.update(preds, masks), device, metric_reps)
    return row


def report(rows: list[EvalRow]) -> str:
    return table(["model", "batch", "HxW", "forward ms", "argmax ms", "confmat update ms", "metric / forward",
                  "reps (fwd, metric)"],
                 [[r.model, str(r.batch), f"{r.height}x{r.width}", r.forward_ms, fmt(r.argmax_ms, 2),
                   fmt(r.update_ms, 2), f"{100 * r.fraction:.2f}%", f"{r.forward_reps}, {r.metric_reps}"]
                  for r in rows])
