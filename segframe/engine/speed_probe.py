"""The speed probe of `trainer.precision=auto` / `module.channels_last=auto` (segframe/engine/speed.py): one
convolutional training step timed in fp32 NCHW and in bf16 autocast + channels_last, interleaved."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F


def _probe_net(channels_last: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A ResNet-stage-like stack (3x3 convs, BatchNorm, ReLU): what dominates a segmentation step."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 64, 3, stride=2, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
        *[m for _ in range(3) for m in (torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
                                        torch.nn.ReLU())],
        torch.nn.Conv2d(64, 8, 1))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, torch.optim.SGD(net.parameters(), lr=1e-3)


def probe(seconds: float = 1.0, size: int = 128, batch: int = 4, threads: int | None = 1,
          clock: Callable[[], float] = time.thread_time) -> dict[str, float]:
    """Median ms of one training step of _probe_net: fp32 NCHW vs bf16 autocast + channels_last,
    interleaved, for about `seconds` after one warm-up step each. The caller's random state and
    thread count are left as they were: a run that probes initialises its model as one that reads
    the cache does.

    By default in one thread, timed by that thread's CPU time: what the step costs in compute, which
    other processes on the machine do not change. The wall clock of a multi-threaded step (`threads=None`,
    `clock=time.perf_counter`, the probe before 2026-12) measures the waits of its threads for each other
    too: with two busy processes on 2 cores both sides took ~750 ms and the 2.4x of an idle machine
    read as 1.08x (docs/performance.md, "The automatic choice under load")."""
    before = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(threads)
        with torch.random.fork_rng(devices=[]):
            return _probe(seconds, size, batch, clock)
    finally:
        torch.set_num_threads(before)


def _probe(seconds: float, size: int, batch: int, clock: Callable[[], float]) -> dict[str, float]:
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 8, (batch, size // 2, size // 2))
    runs = {}
    for fast in (False, True):
        net, opt = _probe_net(fast)
        runs["bf16+channels_last" if fast else "fp32"] = (net, opt, fast)
    times: dict[str, list[float]] = {k: [] for k in runs}
    deadline = clock() + seconds
    rounds = 0
    while rounds < 2 or (clock() < deadline and rounds < 50):
        for name, (net, opt, fast) in runs.items():
            inputs = x.contiguous(memory_format=torch.channels_last) if fast else x
            start = clock()
            with torch.autocast("cpu", dtype=torch.bfloat16) if fast else contextlib.nullcontext():
                loss = F.cross_entropy(net(inputs).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rounds:  # the first round warms up
                times[name].append(clock() - start)
        rounds += 1
    return {name: round(1000 * sorted(t)[len(t) // 2], 2) for name, t in times.items()}
