"""Checkpoint write cost: segframe's atomic write (temporary name, fsync, rename) against Lightning's
own writer, on the checkpoint a training run holds (FCN weights + SGD momentum), interleaved."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from segframe.bench.common import fmt, median, mib, table
from segframe.engine.checkpointing import AtomicCheckpointIO
from segframe.models.fcn import FCN


def training_state(backbone: str, stride: int, classes: int = 21) -> dict[str, Any]:
    """What dominates a Lightning checkpoint's bytes: the model's state_dict and the optimizer's
    state after a step (SGD momentum: one buffer per parameter)."""
    model = FCN(classes, stride, backbone, pretrained=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()], "epoch": 0,
            "global_step": 1}


def bench_checkpoint(backbones: list[str], stride: int, repeats: int, folder: Path) -> list[dict[str, Any]]:
    writers = {"lightning": TorchCheckpointIO(), "atomic": AtomicCheckpointIO()}
    rows = []
    for backbone in backbones:
        state = training_state(backbone, stride)
        times: dict[str, list[float]] = {name: [] for name in writers}
        for _ in range(repeats):  # interleaved, so a noisy moment hits both
            for name, writer in writers.items():
                path = folder / f"{name}.ckpt"
                start = time.perf_counter()
                writer.save_checkpoint(state, path)
                times[name].append(time.perf_counter() - start)
        size = (folder / "atomic.ckpt").stat().st_size
        for name in writers:
            (folder / f"{name}.ckpt").unlink()
        rows.append({"model": f"FCN-{stride}s {backbone}", "mib": mib(size), "repeats": repeats,
                     **{name: (median(ts), min(ts), max(ts)) for name, ts in times.items()}})
    return rows


def report(rows: list[dict[str, Any]], folder: str) -> str:
    body = [[r["model"], fmt(r["mib"], 0), r["repeats"],
             *(f"{1000 * r[n][0]:.0f} ({1000 * r[n][1]:.0f}-{1000 * r[n][2]:.0f})" for n in ("lightning", "atomic")),
             fmt(r["atomic"][0] / r["lightning"][0], 2)] for r in rows]
    return (f"ms per save of weights + SGD momentum into {folder} (median, min-max over the repeats, interleaved); "
            "atomic = temporary name + fsync + rename (segframe's last.ckpt and best checkpoints)\n"
            + table(["model", "MiB", "n", "lightning ms", "atomic ms", "atomic/lightning"], body))
