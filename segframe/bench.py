"""`python -m segframe.bench`: throughput figures measured side by side in one run.

  loader  samples/s of the shard pipeline (tar read + decode + augment), per worker count
  step    LightningModule train step vs a bare PyTorch loop on the same model and batch

Nothing here is asserted in tests: timings are printed, to be read and recorded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def bench_loader(shard_dir: Path, crop: int, batch: int, workers: list[int], seconds: float) -> list[tuple]:
    from segframe.data.augment import default_train, identity
    from segframe.data.datamodule import SegDataModule

    rows = []
    for label, transform in (("decode", identity()), ("decode+augment", default_train(crop_size=crop))):
        for w in workers:
            dm = SegDataModule(str(shard_dir), transform, identity(), batch_size=batch, num_workers=w, shuffle_buffer=64)
            loader = dm.train_dataloader()
            n, start, first = 0, None, True
            epoch = 0
            while True:
                dm.set_epoch(epoch)
                for images, _ in loader:
                    if first:  # worker start-up is not throughput
                        start, first = time.perf_counter(), False
                        continue
                    n += images.shape[0]
                if start is not None and time.perf_counter() - start >= seconds:
                    break
                epoch += 1
            rate = n / (time.perf_counter() - start)
            rows.append((label, w, rate, rate / max(w, 1)))
    return rows


def _batch(batch: int, size: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, classes, (batch, size, size), generator=g)
    return images, masks


def bench_bare(model: torch.nn.Module, batch: tuple, steps: int, warmup: int) -> float:
    """Seconds per step of the loop one would write by hand: forward, CE, backward, SGD step."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, masks = batch
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x = images.float().div_(255.0)
        loss = torch.nn.functional.cross_entropy(model(x), masks, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def bench_lightning(model: torch.nn.Module, batch: tuple, steps: int, warmup: int, classes: int) -> float:
    """Seconds per step of SegModule under pl.Trainer (loss, logging, metrics hooks, loop)."""
    import functools

    import pytorch_lightning as pl

    from segframe.module import SegModule

    times: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, trainer, module, b, idx):
            if idx == warmup:
                times.append(time.perf_counter())

        def on_train_end(self, trainer, module):
            times.append(time.perf_counter())

    module = SegModule(model, functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9), None,
                       classes=[str(i) for i in range(classes)], palette=[[0, 0, 0]] * classes)
    data = [batch] * (warmup + steps)
    trainer = pl.Trainer(max_steps=warmup + steps, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[Clock()], limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    return (times[1] - times[0]) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["loader", "step"], help="run one part")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="square input size for the step benchmark")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="bare/Lightning alternations (median reported)")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=4.0, help="loader measuring time per setting")
    args = parser.parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # keep the figures readable
    print(f"segframe bench on {os.cpu_count()} CPU(s), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={torch.cuda.is_available()}")

    if args.only in (None, "loader"):
        from segframe.data.shards import write_dataset
        from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource

        with tempfile.TemporaryDirectory() as tmp:
            shard_dir = Path(tmp) / "shapes"
            write_dataset(ShapesSource(num_train=400, num_val=8, size=96), shard_dir, "shapes", CLASSES, PALETTE,
                          shard_size=50)
            rows = bench_loader(shard_dir, crop=96, batch=8, workers=[int(w) for w in args.workers.split(",")],
                                seconds=args.seconds)
        print("\nloader (shapes 96x96 PNG shards, batch 8)")
        print(f"{'pipeline':<16} {'workers':>7} {'samples/s':>10} {'per worker':>10}")
        for label, w, rate, per in rows:
            print(f"{label:<16} {w:>7} {rate:>10.1f} {per:>10.1f}")

    if args.only in (None, "step"):
        from segframe.models.fcn import FCN

        classes = 6
        batch = _batch(args.batch, args.size, classes)
        bare, light = [], []
        for _ in range(args.repeats):  # alternate so drift affects both sides alike
            torch.manual_seed(0)
            bare.append(bench_bare(FCN(classes, args.stride, args.backbone), batch, args.steps, args.warmup))
            torch.manual_seed(0)
            light.append(bench_lightning(FCN(classes, args.stride, args.backbone), batch, args.steps, args.warmup,
                                         classes))
        b, lt = statistics.median(bare), statistics.median(light)
        print(f"\ntrain step: FCN-{args.stride}s {args.backbone}, batch {args.batch}, {args.size}x{args.size}, "
              f"{args.steps} steps x {args.repeats} repeats (median)")
        print(f"bare PyTorch loop   {1000 * b:8.1f} ms/step  {args.batch / b:7.1f} img/s   runs {[round(1000 * t) for t in bare]}")
        print(f"Lightning SegModule {1000 * lt:8.1f} ms/step  {args.batch / lt:7.1f} img/s   runs {[round(1000 * t) for t in light]}")
        print(f"overhead ratio (Lightning / bare): {lt / b:.3f}  (target <= 1.05)")


if __name__ == "__main__":
    main()
