"""The knobs table: per model, the baseline train step against each setting (one knob, or several
joined by "+", e.g. channels_last+bf16), all built first and then timed in interleaved rounds, so
that a burst of load on a shared machine hits every setting alike. A setting's ms/step is the
median over all its timed steps; its speed-up spread is the min-max over rounds of (baseline
round median / its round median)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from segframe.bench import step
from segframe.bench.common import fmt, median, table, timed
from segframe.bench.step import AUTOCAST, StepRow, knob_parts
from segframe.core.host import cpu_flags
from segframe.engine.speed import NO_BF16_UNITS, bf16_units


def _skip(backbone: str, knob: str, device: torch.device, size: int, base_ms: float, classes: int, stride: int,
          max_slowdown: float) -> str | None:
    """Why not to measure `knob`: the device lacks it, or (autocast) it would be emulated: bf16 on a
    CPU whose flags show no bf16 units, or, where nothing else tells, a small probe too slow. A CPU
    with bf16 units is measured whatever a small probe says: at size/4 fixed costs dominate (VGG16
    channels_last+bf16 probed 3.7x slower at 80 px on an avx512_bf16 EPYC, and is 2.3x faster at 320)."""
    reason = step.skip_reason(knob, device)
    if reason is not None or max_slowdown <= 0 or not set(knob_parts(knob)) & set(AUTOCAST):
        return reason
    units = bf16_units(cpu_flags()) if device.type == "cpu" and "bf16" in knob_parts(knob) else None
    if units is not None:
        return None if units else (f"{NO_BF16_UNITS}: emulated bf16 runs ~10-30x slower than fp32 "
                                   "(--max-slowdown 0 measures it anyway)")
    probe_size = max(64, size // 4)
    slow, fast = step.probe_slowdown(backbone, knob, device, probe_size, classes, stride)
    if slow > max_slowdown * fast:
        return (f"{slow / fast:.1f}x the baseline's step time in a batch-2 {probe_size}px probe "
                f"(limit --max-slowdown {max_slowdown:g}): about {slow / fast * base_ms / 1000:.0f} s per step here")
    return None


def bench_knobs(backbones: list[str], knobs: list[str], batch: int, size: int, device: torch.device,
                peaks: dict[str, float], *, classes: int = 21, stride: int = 8, warmup: int = 1,
                max_steps: int = 20, min_steps: int = 2, budget_s: float = 20.0, max_slowdown: float = 3.0,
                rounds: int = 3, log: Callable[[str], None] = lambda s: None) -> list[StepRow]:
    """For each backbone: the baseline, then each setting of `knobs`; skipped ones get a reason.
    Timed steps per setting: what fits `budget_s` by its warm-up step, within [min_steps, max_steps],
    spread over `rounds` interleaved rounds (fewer when there are fewer steps). `peaks` maps
    "fp32"/"bf16"/"fp16" to matmul GFLOP/s for "% of peak" (missing: not printed). An autocast
    setting that would be emulated is skipped (see _skip; `max_slowdown` 0: measure whatever it costs)."""
    images, masks = step.make_batch(batch, size, classes, device)
    rows: list[StepRow] = []
    for backbone in backbones:
        steps: dict[str, tuple[Callable, StepRow, float]] = {}
        steps["baseline"] = step.prepare(backbone, "baseline", images, masks, device, classes=classes, stride=stride,
                                         warmup=warmup, count_flops=True)
        base_row = steps["baseline"][1]
        log(f"{backbone} baseline: {1000 * steps['baseline'][2]:.0f} ms warm-up step, "
            f"{base_row.flops / 1e9:.0f} GFLOP per step")
        model_rows = [base_row]
        for knob in knobs:
            reason = _skip(backbone, knob, device, size, 1000 * steps["baseline"][2], classes, stride, max_slowdown)
            if reason is None:
                try:
                    steps[knob] = step.prepare(backbone, knob, images, masks, device, classes=classes, stride=stride,
                                               warmup=warmup)
                except Exception as exc:  # e.g. inductor failing to build: report, do not crash the run
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    model_rows.append(StepRow(backbone, knob, batch, size, status="failed",
                                              reason=f"{type(exc).__name__}: {message}"[:200]))
                    log(f"{backbone} {knob}: failed ({model_rows[-1].reason})")
                    continue
                model_rows.append(steps[knob][1])
            else:
                model_rows.append(StepRow(backbone, knob, batch, size, status="skipped", reason=reason))
                log(f"{backbone} {knob}: skipped ({reason})")
        _time_rounds(steps, images, masks, device, max_steps, min_steps, budget_s, rounds, backbone, log)
        for row in model_rows:
            if row.status == "ok":
                row.flops = base_row.flops
                row.speedup = base_row.ms / row.ms
                row.gflop_s = base_row.flops / 1e9 / (row.ms / 1000)
                dtype = next((p for p in knob_parts(row.knob) if p in AUTOCAST), "fp32")
                row.pct_peak = 100 * row.gflop_s / peaks[dtype] if peaks.get(dtype) else math.nan
        rows += model_rows
    return rows


def _time_rounds(steps: dict[str, tuple[Callable, StepRow, float]], images: torch.Tensor, masks: torch.Tensor,
                 device: torch.device, max_steps: int, min_steps: int, budget_s: float, rounds: int, backbone: str,
                 log: Callable[[str], None]) -> None:
    """Time every prepared setting in interleaved rounds; fill each row's steps, ms, img/s and the
    per-round speed-up spread (row.spread, a (min, max) pair)."""
    counts = {k: step.step_count(warm, min_steps, max_steps, budget_s) for k, (_, _, warm) in steps.items()}
    n_rounds = max(1, min(rounds, min(counts.values())))
    times: dict[str, list[float]] = {k: [] for k in steps}
    round_medians: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(n_rounds):
        for knob, (run, _, _) in steps.items():
            n = counts[knob] // n_rounds + (r < counts[knob] % n_rounds)
            with step.cudnn_benchmark("cudnn_benchmark" in knob_parts(knob)):
                these = [timed(lambda: run(images, masks), device) for _ in range(n)]
            times[knob] += these
            round_medians[knob].append(median(these))
        log(f"{backbone} round {r + 1}/{n_rounds}: " + ", ".join(f"{k} {1000 * round_medians[k][-1]:.0f} ms"
                                                               for k in steps))
    for knob, (_, row, _) in steps.items():
        step.record_times(row, times[knob])
        ratios = [b / k for b, k in zip(round_medians["baseline"], round_medians[knob])]
        row.spread = (min(ratios), max(ratios))


def report(rows: list[StepRow], peaks: dict[str, dict]) -> str:
    """The knob table, then skipped settings with their reasons."""
    lines = ["matmul peak (square, same device): " + ", ".join(
        f"{p['dtype']} {p['gflops']:.1f} GFLOP/s at {p['size']}" for p in peaks.values())]
    body = []
    for r in rows:
        if r.status != "ok":
            body.append([r.model, r.knob, r.status, "-", "-", "-", "-", "-", "-", "-", "-"])
            continue
        note = f"compile {r.compile_s:.0f} s (first step {r.first_s:.1f} s)" if "compile" in knob_parts(r.knob) else ""
        spread = f"{r.spread[0]:.2f}-{r.spread[1]:.2f}" if r.spread else "-"
        body.append([r.model, r.knob, str(r.steps), fmt(r.ms), fmt(r.img_s, 2), fmt(r.gflop_s), fmt(r.pct_peak),
                     fmt(r.speedup, 2), spread, fmt(r.flops / 1e9, 1), note])
    lines.append(table(["model", "setting", "steps", "ms/step", "img/s", "GFLOP/s", "% of peak", "speed-up",
                        "per round", "GFLOP/step", "note"], body))
    for r in rows:
        if r.status != "ok":
            lines.append(f"  {r.model} {r.knob} {r.status}: {r.reason}")
    return "\n".join(lines)
