"""`python -m segframe.bench [--only PART[,PART...]] [--quick]`: figures measured side by side in one run.

  convert     converter samples/s per process count on a generated VOC tree; shard / raw bytes
  loader      SegDataModule shard pipeline samples/s (decode, decode + augment) per worker count
  files       shard stream vs per-file Dataset (image.jpg + mask.png) on the same VOC-like images, per worker count,
              in interleaved rounds: median and min-max of the ratio
  dataloader  persistent_workers / prefetch_factor / pin_memory on the shard stream, short epochs, start-up included
  memory      peak RSS of a few training steps per model; loader RSS growth over N, 4N, 16N samples
  eval        eval-step metric work (labels + confusion updates) vs the eval forward pass, before/after issue 16
  step        SegModule under pl.Trainer vs a bare PyTorch loop (Lightning overhead)
  knobs       FCN-8s train step per model: ms/step, img/s, GFLOP/s, % of matmul peak per setting, a knob or a
              combination (channels_last, bf16, channels_last+bf16, fp16, compile, cudnn_benchmark), in
              interleaved rounds; what `auto` picks here; on CUDA also VGG16 at 512x512 bf16 + channels_last
              and the loader workers it needs
  epoch       whole training epochs at a real crop (SegDataModule + SegModule + Lightning, loader workers
              included): fp32 NCHW vs the auto choice vs channels_last+bf16, img/s
  checkpoint  ms per checkpoint save per model (weights + SGD momentum): atomic write vs Lightning's writer

Timings are printed, never asserted; each figure says how many steps / samples it is from.
"""

# The command line of `python -m segframe.bench` (this docstring is its --help description): a
# module of its own, without torch, so that --help and a wrong flag answer before torch loads.

from __future__ import annotations

import argparse

PARTS = ("convert", "loader", "files", "dataloader", "memory", "eval", "step", "knobs", "epoch", "checkpoint",
         "infer")
QUICK = dict(size=64, batch=2, steps=2, min_steps=1, budget=2.0, overhead_steps=2, repeats=1, seconds=1.0, crop=128,
             files_images=48, files_rounds=2, dl_epochs=2, dl_batches=3, eval_size="64", eval_reps=1, memory_steps=1,
             memory_samples=16, convert_images=64, gpu_size=128, checkpoint_repeats=1, infer_size="64",
             infer_reps=1, infer_models="fcn8s_resnet18", epoch_crop=64, epoch_batch=2, epoch_steps=2,
             epoch_workers=0, epoch_repeats=1)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m segframe.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--only", default=",".join(PARTS), help=f"comma-separated parts to run, of {','.join(PARTS)} (default: all)")
    a("--quick", action="store_true", help="tiny sizes everywhere (a smoke run of every part in a few minutes)")
    a("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if available)")
    a("--models", default="vgg16,resnet18", help="FCN backbones for knobs, memory and eval")
    a("--stride", type=int, default=8, help="FCN-32s/16s/8s")
    a("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    g = p.add_argument_group("knobs (train step); --batch and --size also size the memory part's training steps")
    g.add_argument("--batch", type=int, default=8)
    g.add_argument("--size", type=int, default=320, help="square input size")
    g.add_argument("--knobs", default="channels_last,bf16,channels_last+bf16,fp16,compile,cudnn_benchmark",
                   help="settings to compare with the baseline: knobs, or several joined by + (channels_last+bf16)")
    g.add_argument("--rounds", type=int, default=3, help="interleaved rounds the timed steps are spread over")
    g.add_argument("--steps", type=int, default=20, help="most timed steps per figure")
    g.add_argument("--min-steps", type=int, default=2, help="fewest timed steps per figure")
    g.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per figure (sets the count)")
    g.add_argument("--warmup", type=int, default=1, help="untimed steps first (compile gets one more)")
    g.add_argument("--max-slowdown", type=float, default=3.0,
                   help="skip an autocast knob whose small probe step is this many times the baseline's (0: never)")
    g.add_argument("--peak-size", type=int, default=None, help="largest matmul for the peak (8192 CUDA, 2048 CPU)")
    g.add_argument("--compile-cache", action="store_true",
                   help="let torch.compile use inductor's on-disk cache (default: a fresh one, i.e. a cold compile)")
    g.add_argument("--gpu-figures", action=argparse.BooleanOptionalAction, default=None,
                   help="also FCN-8s VGG16 img/s at --gpu-size bf16 (default: on with CUDA)")
    g.add_argument("--gpu-size", type=int, default=512)
    g = p.add_argument_group("epoch (whole Lightning epochs on the generated VOC-like shards)")
    g.add_argument("--epoch-model", default="resnet18", help="FCN-8s backbone")
    g.add_argument("--epoch-crop", type=int, default=320, help="training crop (default augmentation)")
    g.add_argument("--epoch-batch", type=int, default=8)
    g.add_argument("--epoch-steps", type=int, default=25, help="batches per epoch (<= --files-images / batch)")
    g.add_argument("--epoch-workers", type=int, default=2, help="loader processes")
    g.add_argument("--epoch-repeats", type=int, default=2, help="fits per setting, the settings alternating")
    g = p.add_argument_group("step (Lightning overhead)")
    g.add_argument("--overhead-backbone", default="resnet18")
    g.add_argument("--overhead-size", type=int, default=96)
    g.add_argument("--overhead-steps", type=int, default=20)
    g.add_argument("--overhead-warmup", type=int, default=3)
    g.add_argument("--repeats", type=int, default=3, help="bare/Lightning alternations; converter repeats with --only")
    g = p.add_argument_group("loader, files, dataloader")
    g.add_argument("--workers", default="0,1,2", help="DataLoader worker counts to compare")
    g.add_argument("--seconds", type=float, default=4.0, help="measuring time per loader setting")
    g.add_argument("--crop", type=int, default=320, help="augmentation crop for files/dataloader")
    g.add_argument("--loader-batch", type=int, default=8)
    g.add_argument("--files-images", type=int, default=400, help="generated VOC-like images")
    g.add_argument("--files-size", default="375x500",
                   help="HxW of the generated images (VOC's 375x500; e.g. 1024x2048 for Cityscapes-size photos)")
    g.add_argument("--files-rounds", type=int, default=5,
                   help="files: interleaved rounds (each measures shards and files at every worker count)")
    g.add_argument("--dl-workers", type=int, default=2)
    g.add_argument("--dl-epochs", type=int, default=4)
    g.add_argument("--dl-batches", type=int, default=10, help="batches per short epoch")
    g.add_argument("--prefetch", default="2,4", help="prefetch_factor values (2 is the baseline)")
    g = p.add_argument_group("eval, memory, convert")
    g.add_argument("--eval-batch", type=int, default=4)
    g.add_argument("--eval-size", default="320", help="S or HxW, e.g. 375x500")
    g.add_argument("--eval-reps", type=int, default=3, help="timed forward passes per model")
    g.add_argument("--memory-steps", type=int, default=2)
    g.add_argument("--memory-samples", type=int, default=200, help="N of the loader memory sizes N, 4N, 16N")
    g.add_argument("--memory-factors", default="1,4,16")
    g.add_argument("--convert-images", type=int, default=1000, help="images in the generated VOC tree")
    g = p.add_argument_group("infer (eager vs TorchScript vs ONNX Runtime, and the CRF)")
    g.add_argument("--infer-models", default="fcn8s_resnet18,unet_resnet18",
                   help="of fcn8s_resnet18, unet_resnet18, deeplabv3plus_resnet18")
    g.add_argument("--infer-size", default="512", help="S or HxW")
    g.add_argument("--infer-batch", type=int, default=1)
    g.add_argument("--infer-reps", type=int, default=5, help="timed passes per runtime, interleaved")
    g.add_argument("--convert-workers", default="1,2", help="converter process counts to compare")
    g = p.add_argument_group("checkpoint")
    g.add_argument("--checkpoint-repeats", type=int, default=5, help="saves per writer and model, interleaved")
    g.add_argument("--checkpoint-dir", default=None,
                   help="where to write (default: a temporary folder; point it at the disk your runs write to)")
    return p


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = parser()
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.only = names(args.only)
    unknown = [s for s in args.only if s not in PARTS]
    if unknown:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    return args


def ints(text: str) -> list[int]:
    """`--workers 0,1,2` -> [0, 1, 2]."""
    return [int(v) for v in str(text).split(",") if v.strip()]


def names(text: str) -> list[str]:
    """`--models vgg16, resnet18` -> ["vgg16", "resnet18"]."""
    return [v.strip() for v in str(text).split(",") if v.strip()]


def height_width(text: str) -> tuple[int, int]:
    """`--eval-size 375x500` -> (375, 500); `320` -> (320, 320)."""
    h, _, w = str(text).lower().partition("x")
    return int(h), int(w or h)
