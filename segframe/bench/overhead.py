"""Lightning overhead: SegModule under pl.Trainer vs the loop one would write by hand, on the
same model and batch, alternated so that drift affects both sides alike."""

from __future__ import annotations

import functools
import logging
import time
import warnings

import pytorch_lightning as pl
import torch

from segframe.bench.common import median, sync
from segframe.bench.step import make_batch, train_step
from segframe.engine.module import SegModule
from segframe.models.fcn import FCN


def bench_bare(model: torch.nn.Module, batch: tuple, steps: int, warmup: int,
               device: torch.device = torch.device("cpu")) -> float:
    """Seconds per step of the loop one would write by hand: forward, CE, backward, SGD step (the
    knobs' baseline step, step.train_step)."""
    step = train_step(model, device)
    images, masks = (t.to(device) for t in batch)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        step(images, masks)
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_lightning(model: torch.nn.Module, batch: tuple, steps: int, warmup: int, classes: int,
                    device: torch.device = torch.device("cpu")) -> float:
    """Seconds per step of SegModule under pl.Trainer (loss, logging, metrics hooks, loop)."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # it sets INFO on import
    warnings.filterwarnings("ignore", module="pytorch_lightning")  # "no val_dataloader" etc.: keep the figures readable
    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, b, idx):
            if idx == warmup:
                sync(device)
                times.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            sync(device)
            times.append(time.perf_counter())

    module = SegModule(model, functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9), None,
                       classes=[str(i) for i in range(classes)], palette=[[0, 0, 0]] * classes)
    data = [batch] * (warmup + steps)
    trainer = pl.Trainer(max_steps=warmup + steps, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[Clock()], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return (times[1] - times[0]) / steps


def bench_overhead(backbone: str, stride: int, batch_size: int, size: int, steps: int, warmup: int, repeats: int,
                   device: torch.device, classes: int = 6) -> tuple[list[float], list[float]]:
    """([bare s/step per repeat], [Lightning s/step per repeat])."""
    batch = tuple(t.cpu() for t in make_batch(batch_size, size, classes, torch.device("cpu")))
    bare, light = [], []
    for _ in range(repeats):
        torch.manual_seed(0)
        bare.append(bench_bare(FCN(classes, stride, backbone), batch, steps, warmup, device))
        torch.manual_seed(0)
        light.append(bench_lightning(FCN(classes, stride, backbone), batch, steps, warmup, classes, device))
    return bare, light


def report(bare: list[float], light: list[float], backbone: str, stride: int, batch: int, size: int,
           steps: int, repeats: int) -> str:
    b, lt = median(bare), median(light)
    return "\n".join([
        f"FCN-{stride}s {backbone}, batch {batch}, {size}x{size}, {steps} steps x {repeats} repeats (median)",
        f"bare PyTorch loop   {1000 * b:8.1f} ms/step  {batch / b:7.1f} img/s   runs {[round(1000 * t) for t in bare]}",
        f"Lightning SegModule {1000 * lt:8.1f} ms/step  {batch / lt:7.1f} img/s   runs {[round(1000 * t) for t in light]}",
        f"overhead ratio (Lightning / bare): {lt / b:.3f}  (target <= 1.05)",
    ])
