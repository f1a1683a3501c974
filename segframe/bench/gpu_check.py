"""`python -m segframe.bench.gpu_check [--out DIR] [--dry-run]`: the checks to run on the day a GPU
is lent (the `device` tool's 15 minutes), prepared to finish in under 8 minutes on one GPU.

  1. bench      `python -m segframe.bench --device cuda`: the knobs table at 512x512 (channels_last,
                bf16, channels_last+bf16, fp16, cudnn_benchmark, interleaved) for VGG16 and ResNet-18,
                what `auto` picks, FCN-8s VGG16 512x512 bf16 + channels_last img/s and the loader
                workers it needs; whole epochs at crop 512 (fp32 vs auto); the eval metric cost
  2. GPU tests  the GPU-only knob tests (fp16-mixed, cudnn.benchmark, pin_memory) and the auto-choice tests

Each step runs in its own process with a time limit; its output goes to DIR/<step>.log and the
summary (exit code and seconds per step) to DIR/summary.txt. The figures go into docs/performance.md,
in the GPU's own section (the one they replace moves to docs/changelog.md with its date).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = [sys.executable, "-m", "segframe.bench", "--device", "cuda", "--only", "knobs,epoch,eval",
         "--models", "vgg16,resnet18", "--knobs", "channels_last,bf16,channels_last+bf16,fp16,cudnn_benchmark",
         "--size", "512", "--batch", "8", "--steps", "24", "--budget", "4", "--rounds", "3", "--gpu-size", "512",
         "--files-images", "400", "--seconds", "6", "--epoch-crop", "512", "--epoch-batch", "8", "--epoch-steps", "40",
         "--epoch-workers", "8", "--epoch-repeats", "2", "--eval-size", "512", "--eval-reps", "10"]
GPU_TESTS = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "tests/test_scale.py",
             "tests/test_speed.py", "-k", "fp16 or cudnn or pin_memory or bf16 or channels_last or cuda or auto"]
STEPS = [("bench", BENCH, 330), ("gpu_tests", GPU_TESTS, 150)]  # (name, command, seconds): 8 minutes in all


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segframe.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu-check", help="where the logs go (default: $OUT)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their limits; run nothing")
    args = p.parse_args(argv)
    if args.dry_run:
        for name, command, limit in STEPS:
            print(f"{name} (at most {limit} s): {' '.join(command)}")
        return 0
    import torch  # here: --help and --dry-run answer without loading torch

    if not torch.cuda.is_available():
        print(f"error: torch {torch.__version__} sees no CUDA GPU on this machine; run this where one is "
              "(python -m segframe.bench.gpu_check --dry-run lists the steps)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    for name, command, limit in STEPS:
        start = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            try:
                code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=limit, env=env).returncode
            except subprocess.TimeoutExpired:
                code = "timed out"
        summary.append(f"{name}: exit {code} in {time.perf_counter() - start:.0f} s (limit {limit} s)")
        print(summary[-1], flush=True)
    (out / "summary.txt").write_text("\n".join(summary) + "\n")
    return 0 if all(line.endswith(")") and " exit 0 " in line for line in summary[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
