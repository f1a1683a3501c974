"""`python -m segframe.bench.recipe_steps EXPERIMENT... [--size 1024x1280] [--train-images 1350]`: the
training step of each recipe as it trains (its model with random weights, its loss, its optimizer, its
batch size, the precision and memory layout `auto` picks on this device), timed on random batches.

With the images one epoch trains on and the recipe's epochs it prints the GPU time of one run as an
ESTIMATE: model steps only (data loading, validation and checkpoints are not counted; on a fast GPU
the loader must keep up for it to hold: see the bench's `knobs` part for the workers a model needs).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from segframe.bench.common import machine_line, median, sync
from segframe.core.paths import CONF_DIR
from segframe.data.sample import IGNORE_INDEX
from segframe.engine import speed
from segframe.models.base import to_input


def recipe(name: str, overrides: list[str]) -> object:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={name}", "model.pretrained=false", *overrides])


def time_steps(cfg: object, size: tuple[int, int], steps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per training step of `cfg`'s model, loss and optimizer at its batch size."""
    choice = speed.resolve(cfg.trainer.precision, cfg.module.channels_last, device.type)
    model = instantiate(cfg.model).to(device)
    layout = torch.channels_last if choice.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    criterion = instantiate(cfg.loss)(weight=None, reduction=cfg.module.loss_reduction)
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    batch = int(cfg.datamodule.batch_size)
    images = torch.randint(0, 256, (batch, 3, *size), dtype=torch.uint8, device=device)
    masks = torch.randint(0, int(cfg.data.num_classes), (batch, *size), device=device)
    masks[:, :4] = IGNORE_INDEX
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if choice.precision == "bf16-mixed" \
        else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            loss = criterion(model(to_input(images).contiguous(memory_format=layout)), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 3):  # 3 warm-up steps
        start = time.perf_counter()
        step()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"batch": batch, "s_per_step": median(times), "peak_gib": peak, "precision": choice.precision,
            "channels_last": choice.channels_last}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m segframe.bench.recipe_steps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+")
    p.add_argument("--size", default="1024x1280", help="HxW of the training inputs (default: EndoVis 2017's crop)")
    p.add_argument("--train-images", type=int, default=1350, help="images per epoch (default: one EndoVis 2017 fold)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a train override for every recipe, e.g. --set trainer.precision=32-true (repeatable)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    print(machine_line(device))
    print("ESTIMATES: model steps only (no loading, validation or checkpoints), random weights and batches")
    for name in args.experiments:
        cfg = recipe(name, args.set)
        try:
            r = time_steps(cfg, size, args.steps, device)
        except torch.cuda.OutOfMemoryError as exc:
            print(f"{name}: out of memory at batch {cfg.datamodule.batch_size} {args.size}: {str(exc)[:200]}")
            torch.cuda.empty_cache()
            continue
        steps = int(cfg.trainer.max_epochs) * max(1, args.train_images // r["batch"])
        print(f"{name}{' ' + ' '.join(args.set) if args.set else ''}: batch {r['batch']} at {args.size}, {r['precision']}{' + channels_last' if r['channels_last'] else ''}: "
              f"{1000 * r['s_per_step']:.0f} ms/step (median of {args.steps}), {r['batch'] / r['s_per_step']:.1f} img/s, "
              f"peak {r['peak_gib']:.1f} GiB; {steps} steps ({cfg.trainer.max_epochs} epochs x "
              f"{max(1, args.train_images // r['batch'])}) = {steps * r['s_per_step'] / 3600:.2f} h per run (estimate)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
