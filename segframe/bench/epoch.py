"""Whole training epochs at a real crop: SegDataModule (shards, decode, default augmentation, loader
workers) + SegModule + pl.Trainer, as `python -m segframe.train` runs them, once per speed setting
(fp32 NCHW, what `auto` picks, channels_last+bf16), the settings alternating over the repeats.
img/s = images trained / the fit's wall time, worker start-up and the first steps included: what
a user's epoch costs, where the knobs table times single steps."""

from __future__ import annotations

import functools
import logging
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl
import torch

from segframe.bench.common import fmt, table
from segframe.data.augment import default_train, identity
from segframe.data.datamodule import SegDataModule
from segframe.engine.module import SegModule
from segframe.engine.speed import BF16, FP32
from segframe.models.fcn import FCN


@dataclass
class EpochRow:
    setting: str
    precision: str
    channels_last: bool
    images: int = 0
    seconds: list[float] = field(default_factory=list)  # one fit per repeat

    @property
    def img_s(self) -> float:
        return self.images / statistics.median(self.seconds) if self.seconds else math.nan


def settings(auto_precision: str, auto_channels_last: bool) -> list[tuple[str, str, bool]]:
    """(name, trainer.precision, module.channels_last): the fp32 baseline, the auto choice when it
    differs, and bf16 + channels_last."""
    rows = [("fp32 NCHW", FP32, False)]
    if (auto_precision, auto_channels_last) not in ((FP32, False), (BF16, True)):
        rows.append(("auto", auto_precision, auto_channels_last))
    return rows + [("channels_last+bf16", BF16, True)]


def fit_seconds(shard_dir: Path, split: str, backbone: str, crop: int, batch: int, workers: int, steps: int,
                precision: str, channels_last: bool, device: torch.device, classes: int = 21) -> float:
    """Wall seconds of one Lightning fit of `steps` batches (one epoch, no validation)."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    torch.manual_seed(0)
    dm = SegDataModule(str(shard_dir), default_train(crop_size=crop), identity(), batch_size=batch,
                       num_workers=workers, shuffle_buffer=64, train_split=split, val_split=split, test_split=split)
    module = SegModule(FCN(classes, 8, backbone), functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9), None,
                       classes=[str(i) for i in range(classes)], palette=[[0, 0, 0]] * classes,
                       channels_last=channels_last)
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0,
                         precision=precision, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_epoch(shard_dir: Path, split: str, backbone: str, crop: int, batch: int, workers: int, steps: int,
                device: torch.device, runs: list[tuple[str, str, bool]], repeats: int = 1) -> list[EpochRow]:
    rows = [EpochRow(name, precision, channels_last, images=steps * batch) for name, precision, channels_last in runs]
    for _ in range(repeats):
        for row in rows:  # alternating: drift on a shared machine hits every setting alike
            row.seconds.append(fit_seconds(shard_dir, split, backbone, crop, batch, workers, steps, row.precision,
                                           row.channels_last, device))
    return rows


def report(rows: list[EpochRow]) -> str:
    base = rows[0].img_s
    return table(["setting", "trainer.precision", "channels_last", "images", "fit s (per repeat)", "img/s", "vs fp32"],
                 [[r.setting, r.precision, str(r.channels_last), str(r.images),
                   ", ".join(f"{s:.1f}" for s in r.seconds), fmt(r.img_s, 2), fmt(r.img_s / base, 2)] for r in rows])
