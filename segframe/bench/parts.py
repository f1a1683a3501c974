"""One function per `--only` part: run it with the command line's settings, return its text. Each
imports its bench module when it runs, so that a run of one part does not load every other's
dependencies (Lightning, the converters, albumentations)."""

from __future__ import annotations

import argparse
import math
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
        size = height_width(args.files_size)
        _progress(f"generating {args.files_images} VOC-like {size[1]}x{size[0]} images and their shards")
        cache = args._voc_like = voc_like_data(tmp / "voc_like", args.files_images, size=size)
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
    rows = bench_files(shard_dir, items, args.crop, args.loader_batch, ints(args.workers), args.seconds,
                       args.files_rounds)
    h, w = height_width(args.files_size)
    return (f"{len(items)} VOC-like {w}x{h} JPEG + palette PNG pairs (page cache), default_train's distribution "
            f"(scale 0.5-2, pad, crop {args.crop}, flip, colour jitter), batch {args.loader_batch}, "
            f"{args.files_rounds} interleaved rounds of {args.seconds:g} s per setting (whole epochs; the first "
            f"batch, i.e. the first worker start-up, not counted)\n  shards: TrainStream (shuffle buffer 64) as "
            f"SegDataModule builds it: JPEGs decoded by simplejpeg (at 1/2..1/8 when the scale is <= 1/2), "
            f"the windowed scale-pad-crop and flip, uint8 masks, channels-last batches; files: map-style "
            f"Dataset opening JPEGImages/ID.jpg + SegmentationClass/ID.png, shuffle=True, decoded as "
            f"torchvision's VOCSegmentation does (PIL, int64 target), the albumentations "
            f"chain (resize whole image, pad, crop)\n"
            f"  rates: medians over the rounds; shards / files: median of the rounds' ratios, min-max their "
            f"spread\n" + report_files(rows))


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
    from segframe.bench.knobs import bench_knobs, report
    from segframe.bench.step import AUTOCAST, knob_parts, skip_reason
    from segframe.engine import speed

    device, knob_names = args.device, names(args.knobs)
    peak_size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    dtypes = {"fp32": torch.float32}
    for name in sorted({p for k in knob_names for p in knob_parts(k) if p in AUTOCAST}):
        if skip_reason(name, device) is None:
            dtypes[name] = AUTOCAST[name]
    peaks = {name: matmul_peak(device, dtype, peak_size) for name, dtype in dtypes.items()}
    rows = bench_knobs(names(args.models), knob_names, args.batch, args.size, device,
                       {k: v["gflops"] for k, v in peaks.items()}, stride=args.stride, warmup=args.warmup,
                       max_steps=args.steps, min_steps=args.min_steps, budget_s=args.budget,
                       max_slowdown=args.max_slowdown, rounds=args.rounds, log=_progress)
    text = (f"FCN-{args.stride}s, batch {args.batch}, {args.size}x{args.size}, random init, SGD momentum; each setting "
            f"(one knob, or several joined by +) vs the baseline (fp32, NCHW, eager, cudnn.benchmark off), all timed "
            f"in up to {args.rounds} interleaved rounds after {args.warmup} warm-up step(s); ms/step = median of all timed "
            f"steps; per round = the speed-up's min-max over the rounds; GFLOP/s = the baseline step's "
            f"FlopCounterMode count / time; compile = first step - median step, "
            f"{'inductor cache as found' if args.compile_cache else 'cold cache'}\n" + report(rows, peaks) +
            "\n" + speed.now_and_cached(device.type))
    if args.gpu_figures or (args.gpu_figures is None and device.type == "cuda"):
        text += "\n" + _gpu_figure(args, tmp, device)
    return text


def _gpu_figure(args: argparse.Namespace, tmp: Path, device: torch.device) -> str:
    """FCN-8s VGG16 at --gpu-size, bf16 + channels_last (auto's choice on a bf16 GPU): img/s, and the
    loader processes it takes to feed that (one process's decode + default augmentation rate at that
    crop, on the generated VOC-like shards)."""
    from segframe.bench.loader import bench_loader
    from segframe.bench.step import make_batch, measure, skip_reason

    setting, size = "channels_last+bf16", args.gpu_size
    reason = skip_reason(setting, device)
    if reason:
        return f"FCN-{args.stride}s vgg16 {size}x{size} {setting}: skipped ({reason})"
    images, masks = make_batch(args.batch, size, 21, device)
    row = measure("vgg16", setting, images, masks, device, stride=args.stride, warmup=args.warmup,
                  max_steps=args.steps, min_steps=args.min_steps, budget_s=args.budget)
    shard_dir, _ = _voc_like(args, tmp)
    # the VOC-like shards hold one split, "all" (the files part reads them whole)
    (_, _, per_process, _), = [r for r in bench_loader(shard_dir, size, args.batch, [0], args.seconds, split="all")
                               if r[0] == "decode+augment"]
    workers = math.ceil(row.img_s / max(per_process, 1e-9))
    return (f"FCN-{args.stride}s vgg16 {size}x{size} {setting}, batch {args.batch}: {row.img_s:.1f} img/s "
            f"({row.ms:.1f} ms/step, median of {row.steps} steps); one loader process decodes + augments "
            f"{per_process:.1f} samples/s at crop {size} (500x375 VOC-like JPEGs), so feeding it takes "
            f"datamodule.num_workers >= {workers}")


def epoch(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.epoch import bench_epoch, report, settings
    from segframe.engine import speed

    shard_dir, items = _voc_like(args, tmp)
    steps = min(args.epoch_steps, len(items) // args.epoch_batch)
    auto = speed.capability(args.device.type)
    runs = settings(auto.precision, auto.channels_last)
    _progress(f"epoch: {len(runs)} settings x {args.epoch_repeats} repeats of {steps} steps")
    rows = bench_epoch(shard_dir, "all", args.epoch_model, args.epoch_crop, args.epoch_batch, args.epoch_workers,
                       steps, args.device, runs, args.epoch_repeats)
    return (f"one training epoch of {steps} batches of {args.epoch_batch}: FCN-8s {args.epoch_model}, crop "
            f"{args.epoch_crop} (augmentation=default) from {len(items)} generated 500x375 VOC-like JPEG shards, "
            f"{args.epoch_workers} loader workers, SGD momentum, Lightning, no validation; img/s from the median "
            f"fit wall time (start-up included); auto picks precision {auto.precision}, channels_last "
            f"{auto.channels_last} ({auto.reason})\n" + report(rows))


def infer(args: argparse.Namespace, tmp: Path) -> str:
    from segframe.bench.infer import bench_infer, report

    size = height_width(args.infer_size)
    rows = bench_infer(names(args.infer_models), size, args.infer_batch, args.infer_reps)
    return report(rows, size, args.infer_batch, args.infer_reps)


RUN = {"convert": convert, "loader": loader, "files": files, "dataloader": dataloader, "memory": memory,
       "eval": evaluation, "step": step, "knobs": knobs, "epoch": epoch, "checkpoint": checkpoint, "infer": infer}
