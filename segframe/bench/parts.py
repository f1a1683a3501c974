"""One function per `--only` part: run it with the command line's settings, return its text. Each
imports its bench module when it runs, so that a run of one part does not load every other's
dependencies (Lightning, the converters, albumentations)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from segframe.bench.common import matmul_peak, run_in_child
from segframe.bench.options import height_width, ints, names


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def _voc_like(args: argparse.Namespace, tmp: Path) -> tuple[Path, list]:
    """The generated VOC-like images as files and as shards, made once per run."""
    from segframe.bench.loader import voc_like_data

    cache = getattr(args, "_voc_like", None)
    if cache is None:
        _progress(f"generating {args.files_images} VOC-like images and their shards")
        cache = args._voc_like = voc_like_data(tmp / "voc_like", args.files_images)
    return cache


def convert(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.convert import bench_convert, report

    raw, rows = bench_convert(args.convert_images, ints(args.convert_workers),
                              args.repeats if args.only == ["convert"] else 1)
    return report(raw, rows, args.convert_images)


def loader(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.loader import bench_loader, report_loader
    from segframe.data.shard_writer import write_dataset
    from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource

    shard_dir = tmp / "shapes96"
    write_dataset(ShapesSource(num_train=400, num_val=8, size=96), shard_dir, "shapes", CLASSES, PALETTE, shard_size=50)
    rows = bench_loader(shard_dir, crop=96, batch=8, workers=ints(args.workers), seconds=args.seconds)
    return (f"SegDataModule.train_dataloader() over shapes 96x96 PNG shards (400 samples), batch 8, "
            f"{args.seconds:g} s per setting\n" + report_loader(rows))


def files(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.loader import bench_files, report_files

    shard_dir, items = _voc_like(args, tmp)
    rows = bench_files(shard_dir, items, args.crop, args.loader_batch, ints(args.workers), args.seconds)
    return (f"{len(items)} VOC-like 500x375 JPEG + palette PNG pairs (page cache), default_train augmentation "
            f"(scale 0.5-2, pad, crop {args.crop}, flip, colour jitter), batch {args.loader_batch}, "
            f"{args.seconds:g} s per setting (whole epochs; the first batch, i.e. the first worker start-up, not "
            f"counted)\n  shards: TrainStream (shuffle buffer 64) as SegDataModule builds it; files: map-style Dataset "
            f"opening JPEGImages/ID.jpg + SegmentationClass/ID.png, shuffle=True\n" + report_files(rows))


def dataloader(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.loader import bench_dataloader, report_dataloader

    shard_dir, _ = _voc_like(args, tmp)
    rows = bench_dataloader(shard_dir, args.crop, args.loader_batch, args.dl_workers, args.dl_epochs, args.dl_batches,
                            ints(args.prefetch), args.device)
    return (f"shard stream, default_train crop {args.crop}, batch {args.loader_batch}, {args.dl_workers} workers, "
            f"{args.dl_epochs} epochs of {args.dl_batches} batches, timed from the first request (worker start-up "
            f"included); baseline = SegDataModule today (persistent_workers=False, prefetch_factor=2)\n"
            + report_dataloader(rows))


def memory(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.memory import loader_memory, report_loader, report_train, shapes_data, train_memory

    rows = []
    for model in names(args.models):
        _progress(f"memory: {args.memory_steps} training steps of {model} in a fresh process")
        rows.append(run_in_child(train_memory, model, args.batch, args.size, args.memory_steps, str(args.device),
                                 21, args.stride))
    factors = ints(args.memory_factors)
    shard_dir, items = shapes_data(tmp / "memory", args.memory_samples, factors)
    loader_rows = loader_memory(shard_dir, items, args.memory_samples, factors)
    return (f"training: FCN-{args.stride}s, batch {args.batch}, {args.size}x{args.size}, fp32, SGD momentum, "
            f"{args.memory_steps} steps, each model in a fresh process\n" + report_train(rows) +
            f"\n\nloader: one pass, decode only, batch 16, over N, 4N, 16N = "
            f"{', '.join(str(f * args.memory_samples) for f in factors)} shapes 64x64 samples (shards of "
            f"{max(1, args.memory_samples // 2)}; the files are the shards' own bytes), each pass in a fresh process: "
            f"in-process RSS (num_workers=0), then the worker's RSS (num_workers=1)\n" + report_loader(loader_rows))


def evaluation(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.evaluation import bench_eval, report

    h, w = height_width(args.eval_size)
    rows = [bench_eval(m, args.eval_batch, h, w, args.device, stride=args.stride, forward_reps=args.eval_reps)
            for m in names(args.models)]
    return ("SegModule eval step's metric work (labels from the logits + ConfusionMatrix and PerImageScores updates, "
            "21 classes, 5% void) vs the forward pass (inference mode, fp32): before and after issue 16's change, "
            "interleaved, median (min-max) of the reps; both ways' metric states checked equal\n" + report(rows))


def step(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.overhead import bench_overhead, report

    size, steps = min(args.overhead_size, args.size), min(args.overhead_steps, args.steps)
    bare, light = bench_overhead(args.overhead_backbone, args.stride, args.batch, size, steps, args.overhead_warmup,
                                 args.repeats, args.device)
    return report(bare, light, args.overhead_backbone, args.stride, args.batch, size, steps, args.repeats)


def checkpoint(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.checkpoint import bench_checkpoint, report

    folder = Path(args.checkpoint_dir) if args.checkpoint_dir else tmp / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    rows = bench_checkpoint(names(args.models), args.stride, args.checkpoint_repeats, folder)
    return report(rows, str(folder))


def knobs(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.step import bench_knobs, make_batch, measure, report, skip_reason

    device, knob_names = args.device, names(args.knobs)
    peak_size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    dtypes = {"fp32": torch.float32}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if name in knob_names and skip_reason(name, device) is None:
            dtypes[name] = dtype
    peaks = {name: matmul_peak(device, dtype, peak_size) for name, dtype in dtypes.items()}
    rows = bench_knobs(names(args.models), knob_names, args.batch, args.size, device,
                       {k: v["gflops"] for k, v in peaks.items()}, stride=args.stride, warmup=args.warmup,
                       max_steps=args.steps, min_steps=args.min_steps, budget_s=args.budget,
                       max_slowdown=args.max_slowdown, log=_progress)
    text = (f"FCN-{args.stride}s, batch {args.batch}, {args.size}x{args.size}, random init, SGD momentum; each knob "
            f"alone vs the baseline (fp32, NCHW, eager, cudnn.benchmark off); ms/step = median of the timed steps "
            f"after {args.warmup} warm-up step(s); GFLOP/s = the baseline step's FlopCounterMode count / time; "
            f"compile = first step - median step, {'inductor cache as found' if args.compile_cache else 'cold cache'}\n"
            + report(rows, peaks))
    if args.gpu_figures or (args.gpu_figures is None and device.type == "cuda"):
        reason = skip_reason("bf16", device)
        if reason:
            text += f"\nFCN-{args.stride}s vgg16 {args.gpu_size}x{args.gpu_size} bf16: skipped ({reason})"
        else:
            images, masks = make_batch(args.batch, args.gpu_size, 21, device)
            row = measure("vgg16", "bf16", images, masks, device, stride=args.stride, warmup=args.warmup,
                          max_steps=args.steps, min_steps=args.min_steps, budget_s=args.budget)
            text += (f"\nFCN-{args.stride}s vgg16 {args.gpu_size}x{args.gpu_size} bf16 autocast, batch {args.batch}: "
                     f"{row.img_s:.1f} img/s ({row.ms:.1f} ms/step, median of {row.steps} steps)")
    return text


def infer(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.infer import bench_infer, report

    size = height_width(args.infer_size)
    rows = bench_infer(names(args.infer_models), size, args.infer_batch, args.infer_reps)
    return report(rows, size, args.infer_batch, args.infer_reps)


RUN = {"convert": convert, "loader": loader, "files": files, "dataloader": dataloader, "memory": memory,
       "eval": evaluation, "step": step, "knobs": knobs, "checkpoint": checkpoint, "infer": infer}
