"""`python -m segframe.bench [--only PART[,PART...]] [--quick]`: the parts and their flags are in
segframe/bench/options.py (`--help`); each part's measurement in the module parts.py names."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from segframe.bench.options import PARTS, parse

__all__ = ["main", "parse"]  # parse: importable from here, as the tests do


def main(argv: list[str] | None = None) -> None:
    # before torch, albumentations and the converters load: they read these on import
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # converters' progress bars would bury the tables
    args = parse(argv)
    # here, after parse(): --help and a wrong flag answer without loading torch (~5 s)
    import torch

    from segframe.bench import parts
    from segframe.bench.common import default_device, machine, machine_line

    args.device = torch.device(args.device) if args.device else default_device()
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU here; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    print("segframe bench: " + ", ".join(f"{k} {v}" for k, v in machine(args.device).items()), flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="segframe-bench-") as tmp:
        if not args.compile_cache:  # read when inductor compiles: every run measures a cold compile
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / "inductor-cache")
        for part in PARTS:
            if part not in args.only:
                continue
            print(f"\n== {part} == {machine_line(args.device)}", flush=True)
            t0 = time.perf_counter()
            print(parts.RUN[part](args, Path(tmp)), flush=True)
            print(f"({part} took {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nbench took {time.perf_counter() - started:.0f} s in all", flush=True)


if __name__ == "__main__":
    sys.exit(main())
