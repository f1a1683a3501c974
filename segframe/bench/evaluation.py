"""Evaluation cost: what SegModule's eval step adds to the forward pass for its metrics, i.e.
class labels from the logits, `ConfusionMatrix.update` and `PerImageScores.update`, as a fraction
of the forward pass on the same eval batch (inference mode, as Lightning validates). Measured two
ways in one run, interleaved: before issue 16 (torch.argmax, then each metric gathers the valid
pixels with a boolean index before its bincount) and now (metrics.labels, then counting in place
with the ignored pixels in an extra bin). Both must give the same states: checked on each run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torchmetrics import Metric

from segframe.bench.common import fmt, median, sync, table, timed
from segframe.bench.step import make_batch
from segframe.evaluation.metrics import ConfusionMatrix, PerImageScores, labels, valid_labels
from segframe.models.base import to_input
from segframe.models.fcn import FCN

WAYS = ("before", "after")
DESCRIBE = {"before": "argmax + gathered", "after": "labels() + in place"}
LABELS = {"before": lambda logits: logits.argmax(1), "after": labels}


class GatheredConfusionMatrix(ConfusionMatrix):
    """ConfusionMatrix.update before issue 16: boolean-gather the valid pixels, then bincount."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        n = self.num_classes
        _, t, p = valid_labels(preds, target, n, self.ignore_index)
        self.confmat += torch.bincount(t * n + p, minlength=n * n).view(n, n)


class GatheredImageScores(PerImageScores):
    """PerImageScores.update before issue 16: the same gather, then a bincount over image*C*C + gt*C + pred."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        n, batch = self.num_classes, target.shape[0]
        valid, t, p = valid_labels(preds, target, n, self.ignore_index)
        image = torch.arange(batch, device=target.device).view(-1, 1, 1).expand_as(target)[valid]
        self._add_images(torch.bincount((image * n + t) * n + p, minlength=batch * n * n).view(batch, n, n))


@dataclass
class Way:
    """One way's per-round times in ms: labels from the logits, then both metric updates."""
    labels_ms: list[float] = field(default_factory=list)
    update_ms: list[float] = field(default_factory=list)

    @property
    def total_ms(self) -> list[float]:
        return [a + b for a, b in zip(self.labels_ms, self.update_ms)]


@dataclass
class EvalRow:
    model: str
    batch: int
    height: int
    width: int
    forwards_ms: list[float] = field(default_factory=list)
    ways: dict[str, Way] = field(default_factory=lambda: {w: Way() for w in WAYS})
    forward_reps: int = 0
    metric_reps: int = 0

    @property
    def forward_ms(self) -> float:
        return median(self.forwards_ms)

    def fraction(self, way: str = "after") -> float:
        """Median (labels + metric updates) / median forward."""
        return median(self.ways[way].total_ms) / self.forward_ms

    def best_fraction(self, way: str = "after") -> float:
        """Fastest metric work / fastest forward: on a shared, busy machine the least disturbed pair."""
        return min(self.ways[way].total_ms) / min(self.forwards_ms)


def _metrics(way: str, classes: int, device: torch.device) -> tuple[ConfusionMatrix, PerImageScores]:
    """The eval step's two metrics, counting the way `way` does."""
    if way == "before":
        return GatheredConfusionMatrix(classes).to(device), GatheredImageScores(classes).to(device)
    return ConfusionMatrix(classes).to(device), PerImageScores(classes).to(device)


def _same_states(a: tuple[ConfusionMatrix, PerImageScores], b: tuple[ConfusionMatrix, PerImageScores]) -> bool:
    """Both ways counted the same integers (and so summed the same per-image floats)."""
    return torch.equal(a[0].compute(), b[0].compute()) and all(
        torch.equal(a[1].compute()[k], b[1].compute()[k]) for k in a[1].compute())


def _timed_step(label: Callable[[torch.Tensor], torch.Tensor], metrics: Sequence[Metric], logits: torch.Tensor,
                masks: torch.Tensor, device: torch.device, times: Way) -> None:
    """The eval step's metric work once, as SegModule._eval_step does it: labels, then each update."""
    sync(device)
    start = time.perf_counter()
    preds = label(logits)
    sync(device)
    labelled = time.perf_counter()
    for metric in metrics:
        metric.update(preds, masks)
    sync(device)
    times.labels_ms.append(1000 * (labelled - start))
    times.update_ms.append(1000 * (time.perf_counter() - labelled))


def bench_eval(backbone: str, batch: int, height: int, width: int, device: torch.device, classes: int = 21,
               stride: int = 8, forward_reps: int = 3, metric_reps: int = 20) -> EvalRow:
    torch.manual_seed(0)
    model = FCN(classes, stride, backbone, pretrained=False).to(device).eval()
    images, masks = make_batch(batch, height, classes, device, width=width)
    metrics = {way: _metrics(way, classes, device) for way in WAYS}
    row = EvalRow(backbone, batch, height, width, forward_reps=forward_reps, metric_reps=metric_reps)
    with torch.inference_mode():
        out: dict[str, torch.Tensor] = {}

        def forward() -> None:
            out["logits"] = model(to_input(images))  # as SegModule.forward

        forward()  # warm-up
        logits = out["logits"]
        for way in WAYS:  # warm-up, and the exactness check on fresh states
            preds = LABELS[way](logits)
            for metric in metrics[way]:
                metric.update(preds, masks)
        if not _same_states(*metrics.values()):
            raise RuntimeError("the eval step's metric states differ before and after issue 16's change")
        rounds = max(metric_reps, forward_reps)
        for rep in range(rounds):  # interleaved, the order alternating: drift hits both ways and the forward alike
            if (rep + 1) * forward_reps // rounds > rep * forward_reps // rounds:  # forward_reps spread evenly
                row.forwards_ms.append(1000 * timed(forward, device))
            if rep < metric_reps:
                for way in WAYS if rep % 2 == 0 else WAYS[::-1]:
                    _timed_step(LABELS[way], metrics[way], logits, masks, device, row.ways[way])
    return row


def _spread(values: list[float]) -> str:
    return f"{fmt(median(values), 2)} ({fmt(min(values), 2)}-{fmt(max(values), 2)})"


def report(rows: list[EvalRow]) -> str:
    lines = [[r.model, str(r.batch), f"{r.height}x{r.width}", _spread(r.forwards_ms), f"{way}: {DESCRIBE[way]}",
              _spread(r.ways[way].labels_ms), _spread(r.ways[way].update_ms), _spread(r.ways[way].total_ms),
              f"{100 * r.fraction(way):.2f}%", f"{100 * r.best_fraction(way):.2f}%",
              f"{r.forward_reps}, {r.metric_reps}"] for r in rows for way in WAYS]
    return table(["model", "batch", "HxW", "forward ms (min-max)", "eval step", "labels ms (min-max)",
                  "updates ms (min-max)", "metric ms (min-max)", "metric / forward", "min / min",
                  "reps (fwd, metric)"], lines)
