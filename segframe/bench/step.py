"""One FCN training step (uint8 batch -> float, forward, cross-entropy, backward, SGD with
momentum) with speed knobs on: one knob, or several joined by "+" (channels_last+bf16), against
the baseline (fp32, contiguous NCHW, eager, cudnn.benchmark off). bench/knobs.py tables them.

Achieved GFLOP/s = FLOPs of one forward + backward (counted by torch.utils.flop_counter on the
baseline's first warm-up step; every knob does the same arithmetic) / median step time; "% of
peak" compares it with a large square matmul of the same dtype on the same device.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from segframe.bench.common import median, timed
from segframe.data.sample import IGNORE_INDEX
from segframe.models.base import to_input
from segframe.models.fcn import FCN

KNOBS = ("channels_last", "bf16", "fp16", "compile", "cudnn_benchmark")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepRow:
    model: str
    knob: str
    batch: int
    size: int
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    steps: int = 0  # timed steps the figure is the median of
    ms: float = math.nan
    img_s: float = math.nan
    gflop_s: float = math.nan
    pct_peak: float = math.nan
    speedup: float = math.nan  # baseline ms / this ms
    first_s: float = math.nan  # first step (compile included)
    compile_s: float = math.nan  # first step - median step, for torch.compile
    flops: float = math.nan  # of one step
    spread: tuple[float, float] | None = None  # speed-up min, max over the interleaved rounds


def make_batch(batch: int, size: int, classes: int, device: torch.device,
               width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the loader hands over: uint8 images [B,3,H,W] (H = `size`, W = `width` or `size`) and
    int64 masks with ~5% void pixels (VOC's void borders), the same for every call (seed 0)."""
    g = torch.Generator().manual_seed(0)
    height, width = size, width or size
    images = torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, classes, (batch, height, width), generator=g)
    masks[torch.rand(masks.shape, generator=g) < 0.05] = IGNORE_INDEX
    return images.to(device), masks.to(device)


def compiler() -> str | None:
    """The C++ compiler inductor would use on CPU ($CXX, else g++), or None."""
    cxx = os.environ.get("CXX") or "g++"
    return shutil.which(cxx)


def knob_parts(knob: str) -> list[str]:
    """The single knobs of a setting: "channels_last+bf16" -> ["channels_last", "bf16"]; "baseline" -> []."""
    return [p.strip() for p in knob.split("+") if p.strip() and p.strip() != "baseline"]


def skip_reason(knob: str, device: torch.device) -> str | None:
    """Why `knob` (one knob, or several joined by "+") cannot be measured on `device`, or None when it can."""
    parts = knob_parts(knob)
    if len(parts) > 1:
        if len(set(parts) & set(AUTOCAST)) > 1:
            return "bf16 and fp16 autocast exclude each other"
        return next((f"{p}: {r}" for p in parts if (r := skip_reason(p, device)) is not None), None)
    cuda = device.type == "cuda"
    if knob == "fp16" and not cuda:
        return "fp16 autocast is a CUDA knob (CPU autocast runs bf16; CPU fp16 convs are no fast path)"
    if knob == "cudnn_benchmark" and not cuda:
        return "cudnn.benchmark picks cuDNN conv algorithms: CUDA only"
    if knob == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        return "this GPU has no bf16"
    if knob == "compile":
        try:
            from torch import _dynamo

            if not _dynamo.is_dynamo_supported():
                return f"torch.compile is not supported on Python {sys.version_info[0]}.{sys.version_info[1]}"
        except ImportError as exc:
            return f"torch.compile unavailable ({exc})"
        if not cuda and compiler() is None:
            return (f"inductor needs a C++ compiler on CPU: ${{CXX}} / g++ not found "
                    f"(CXX={os.environ.get('CXX', '')!r}); install g++ or set CXX")
    if knob not in KNOBS and knob != "baseline":
        return f"unknown knob (known: {', '.join(KNOBS)})"
    return None


def train_step(model: torch.nn.Module, device: torch.device,
               knob: str = "baseline") -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A closure doing one training step of `model` (moved to `device`) with `knob` on: the loop
    one would write by hand (uint8 -> float as SegModule does, forward, cross-entropy, backward,
    SGD with momentum). The knobs, memory and Lightning-overhead figures all time this step."""
    parts = knob_parts(knob)
    model = model.to(device)
    channels_last = "channels_last" in parts
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    forward = torch.compile(model) if "compile" in parts else model
    dtype = next((AUTOCAST[p] for p in parts if p in AUTOCAST), None)
    scaler = torch.amp.GradScaler("cuda") if "fp16" in parts else None

    def step(images: torch.Tensor, masks: torch.Tensor) -> None:
        x = to_input(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(forward(x), masks, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()

    step.model = model  # type: ignore[attr-defined]
    return step


def build_step(backbone: str, knob: str, device: torch.device, classes: int = 21,
               stride: int = 8) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A fresh FCN (seed 0, random init) and train_step()'s closure for it with `knob` on."""
    torch.manual_seed(0)
    return train_step(FCN(classes, stride, backbone, pretrained=False), device, knob)


def step_flops(step: Callable, images: torch.Tensor, masks: torch.Tensor) -> int:
    """FLOPs of one training step as FlopCounterMode counts them (convolutions and matmuls of the
    forward and backward; the optimizer's elementwise update is not counted). Runs the step."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(images, masks)
    return int(counter.get_total_flops())


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def prepare(backbone: str, knob: str, images: torch.Tensor, masks: torch.Tensor, device: torch.device, *,
            classes: int = 21, stride: int = 8, warmup: int = 1,
            count_flops: bool = False) -> tuple[Callable[[torch.Tensor, torch.Tensor], None], StepRow, float]:
    """(the step, its StepRow with first_s (and flops) filled, the last warm-up step's seconds):
    `warmup` untimed steps, one more for torch.compile, whose first step compiles. With
    `count_flops` the first warm-up step runs under FlopCounterMode."""
    row = StepRow(backbone, knob, batch=images.shape[0], size=images.shape[-1])
    with cudnn_benchmark("cudnn_benchmark" in knob_parts(knob)):
        step = build_step(backbone, knob, device, classes, stride)
        warm: list[float] = []
        for i in range(max(1, warmup) + ("compile" in knob_parts(knob))):
            if i == 0 and count_flops:
                counted: list[int] = []
                warm.append(timed(lambda: counted.append(step_flops(step, images, masks)), device))
                row.flops = float(counted[0])
            else:
                warm.append(timed(lambda: step(images, masks), device))
    row.first_s = warm[0]
    return step, row, warm[-1]


def step_count(warm_s: float, min_steps: int, max_steps: int, budget_s: float) -> int:
    """Timed steps that fit in `budget_s` judging by a warm-up step, clamped to [min_steps, max_steps]."""
    return max(min_steps, min(max_steps, int(budget_s / max(warm_s, 1e-9))))


def record_times(row: StepRow, times: list[float]) -> None:
    """Fill `row`'s steps, ms, img/s (and compile_s) from its timed steps' seconds."""
    seconds = median(times)
    row.steps, row.ms, row.img_s = len(times), 1000 * seconds, row.batch / seconds
    if "compile" in knob_parts(row.knob):
        row.compile_s = max(0.0, row.first_s - seconds)


def measure(backbone: str, knob: str, images: torch.Tensor, masks: torch.Tensor, device: torch.device, *,
            classes: int = 21, stride: int = 8, warmup: int = 1, max_steps: int = 20, min_steps: int = 2,
            budget_s: float = 20.0, count_flops: bool = False) -> StepRow:
    """One StepRow: prepare()'s warm-up, then step_count() timed steps."""
    step, row, warm = prepare(backbone, knob, images, masks, device, classes=classes, stride=stride, warmup=warmup,
                              count_flops=count_flops)
    with cudnn_benchmark("cudnn_benchmark" in knob_parts(knob)):
        times = [timed(lambda: step(images, masks), device)
                 for _ in range(step_count(warm, min_steps, max_steps, budget_s))]
    record_times(row, times)
    return row


def probe_slowdown(backbone: str, knob: str, device: torch.device, size: int, classes: int = 21,
                   stride: int = 8) -> tuple[float, float]:
    """(knob step s, baseline step s) at batch 2 (BatchNorm needs 2), `size` px, each the faster of
    two steps after a warm-up, for deciding whether an autocast knob is too slow to measure at full
    size (bf16 on a CPU without native bf16 is ~10x slower than fp32)."""
    images, masks = make_batch(2, size, classes, device)
    steps = {k: build_step(backbone, k, device, classes, stride) for k in (knob, "baseline")}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(3):  # interleaved, so that a burst of load on a shared machine hits both
        for k, step in steps.items():
            t = timed(lambda: step(images, masks), device)
            if i:
                times[k].append(t)
    return min(times[knob]), min(times["baseline"])
