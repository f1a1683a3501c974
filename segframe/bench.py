"""`python -m segframe.bench`: throughput figures measured side by side in one run.

  loader   samples/s of the shard pipeline (tar read + decode + augment), per worker count
  step     LightningModule train step vs a bare PyTorch loop on the same model and batch
  convert  samples/s of converting a generated VOC-format tree (VOC-size JPEGs, palette PNG
           masks) into shards, per converter process count, and shard bytes / raw bytes

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


def _voc_pair(args: tuple[Path, str, int]) -> int:
    """One VOC-like image (500x375 JPEG of smooth regions, edges and sensor noise, ~VOC's file
    size) and its palette PNG label with a void outline; returns the bytes written."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    from segframe.data.sources.voc import PALETTE, write_sbd_mat

    base, image_id, seed = args
    rng = np.random.default_rng(seed)
    w, h = 500, 375
    small = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)  # scene texture: ~100 KiB JPEGs like VOC's
    image = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    label = Image.new("P", (w, h), 0)
    label.putpalette([c for colour in PALETTE for c in colour] + [224, 224, 192] * (256 - len(PALETTE)))
    draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0 = int(rng.integers(0, w - 120)), int(rng.integers(0, h - 100))
        box = [x0, y0, x0 + int(rng.integers(60, 200)), y0 + int(rng.integers(60, 200))]
        cls = int(rng.integers(1, len(PALETTE)))
        draw_image.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw_label.ellipse(box, fill=cls, outline=255, width=5)  # VOC's 5-px void border
    pixels = np.asarray(image.filter(ImageFilter.DETAIL), dtype=np.int16)
    pixels = pixels + rng.normal(0, 6, pixels.shape).astype(np.int16)
    jpg = base / "JPEGImages" / f"{image_id}.jpg"
    png = base / "SegmentationClass" / f"{image_id}.png"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(jpg, quality=90)
    label.save(png)
    label_ids = np.asarray(label)
    write_sbd_mat(base.parent.parent / "benchmark_RELEASE" / "dataset" / "cls" / f"{image_id}.mat",
                  np.where(label_ids == 255, 0, label_ids))  # SBD has no void border
    return jpg.stat().st_size + png.stat().st_size


def write_voc_tree(root: Path, num_images: int) -> int:
    """`root/VOCdevkit/VOC2012` of generated images, and `root/benchmark_RELEASE/dataset` with SBD
    labels for the same images, in roughly VOC-aug's proportions (VOC lists 24% of the images, SBD
    88%; real: 2913 and 11355 of 12031). Returns the VOC tree's raw bytes (images + labels)."""
    import multiprocessing as mp

    base, sbd = root / "VOCdevkit" / "VOC2012", root / "benchmark_RELEASE" / "dataset"
    for folder in (base / "JPEGImages", base / "SegmentationClass", base / "ImageSets/Segmentation", sbd / "cls"):
        folder.mkdir(parents=True, exist_ok=True)
    ids = [f"2012_{i:06d}" for i in range(num_images)]
    cut = lambda fraction: round(fraction * num_images)  # noqa: E731
    lists = {base / "ImageSets/Segmentation/train.txt": ids[:cut(0.12)],
             base / "ImageSets/Segmentation/val.txt": ids[cut(0.12):cut(0.24)],
             sbd / "train.txt": ids[:cut(0.06)] + ids[cut(0.19):cut(0.80)],
             sbd / "val.txt": ids[cut(0.80):]}
    for path, listed in lists.items():
        path.write_text("".join(f"{i}\n" for i in listed))
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        return sum(pool.map(_voc_pair, [(base, i, n) for n, i in enumerate(ids)], chunksize=16))


def bench_convert(num_images: int, workers: list[int], repeats: int) -> tuple[int, list[tuple]]:
    """(raw bytes of the VOC tree, [(dataset, workers, samples, samples/s, shard bytes)]): the `voc`
    converter over every image of a generated tree (all listed, as train/val), then `voc_aug`."""
    from segframe.data.shards import write_dataset
    from segframe.data.sources.voc import CLASSES, PALETTE, VOCAugSource, VOCSource

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = Path(tmp) / "raw"
        raw = write_voc_tree(raw_dir, num_images)
        voc_root, sbd_root = raw_dir / "VOCdevkit" / "VOC2012", raw_dir / "benchmark_RELEASE" / "dataset"
        everything = voc_root / "ImageSets/Segmentation"
        ids = sorted(p.stem for p in (voc_root / "JPEGImages").iterdir())
        (everything / "all.txt").write_text("".join(f"{i}\n" for i in ids))
        sources = {"voc": VOCSource(str(voc_root), splits=["all"]), "voc_aug": VOCAugSource(str(voc_root), str(sbd_root))}
        for _ in range(repeats):  # alternate settings so drift affects all alike
            for name, source in sources.items():
                for w in workers:
                    out = Path(tmp) / f"{name}{w}"
                    start = time.perf_counter()
                    manifest = write_dataset(source, out, name, CLASSES, PALETTE, shard_size=500, num_workers=w)
                    seconds = time.perf_counter() - start
                    count = sum(v["num_samples"] for v in manifest["splits"].values())
                    shard_bytes = sum(s["bytes"] for v in manifest["splits"].values() for s in v["shards"])
                    rows.append((name, w, count, count / seconds, shard_bytes))
    return raw, rows


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
    parser.add_argument("--only", choices=["loader", "step", "convert"], help="run one part")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=96, help="square input size for the step benchmark")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="bare/Lightning alternations (median reported)")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--seconds", type=float, default=4.0, help="loader measuring time per setting")
    parser.add_argument("--convert-images", type=int, default=1000, help="images in the generated VOC tree")
    parser.add_argument("--convert-workers", default="1,2", help="converter process counts to compare")
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

    if args.only in (None, "convert"):
        raw, rows = bench_convert(args.convert_images, [int(w) for w in args.convert_workers.split(",")],
                                  args.repeats if args.only == "convert" else 1)
        print(f"\nconvert (generated VOC tree: {args.convert_images} images 500x375 JPEG + palette PNG, "
              f"{raw / args.convert_images / 1024:.0f} KiB per pair, in the page cache; SBD .mat labels for voc_aug)")
        print(f"{'dataset':<8} {'workers':>7} {'samples':>7} {'samples/s':>10} {'shard/raw bytes':>16}")
        for name, w, count, rate, shard_bytes in rows:
            print(f"{name:<8} {w:>7} {count:>7} {rate:>10.1f} " + (f"{shard_bytes / raw:>16.3f}" if name == "voc" else ""))
        rates: dict[tuple[str, int], list[float]] = {}
        for name, w, _, rate, _ in rows:
            rates.setdefault((name, w), []).append(rate)
        lo, hi = min(w for _, w in rates), max(w for _, w in rates)
        for name in ("voc", "voc_aug"):
            best = statistics.median(rates[(name, hi)])
            print(f"{name}: {best:.0f} samples/s with {hi} worker(s) (target >= 150), "
                  f"{best / statistics.median(rates[(name, lo)]):.2f}x the {lo}-worker rate")
        print(f"the 12,031 VOC-aug images at the voc_aug rate: {12031 / statistics.median(rates[('voc_aug', hi)]):.0f} s "
              "(target < 90 s)")

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
