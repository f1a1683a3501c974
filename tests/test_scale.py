"""Scale out on one CPU machine: DDP training with 2 gloo processes, and every speed knob
composing and running a training step (skipped with the reason where it cannot apply)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from helpers.cli import REPO, ok as _ok, run_cli
from helpers.config import DDP, TINY_ON_TINY_SHAPES, compose, tiny


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ddp")
    run = root / "run"
    _ok(run_cli("train", *DDP, f"paths.data_dir={root / 'data'}", "trainer.max_epochs=2", f"hydra.run.dir={run}",
                timeout=300))
    return root, run


def test_ddp_training_on_two_processes_finishes_with_equal_batches_per_rank(ddp_run):
    root, run = ddp_run
    metrics = json.loads((run / "metrics.json").read_text())
    # 14 samples // (batch 3 x 2 ranks) = 2 batches per rank per epoch, on both ranks (else a hang)
    assert metrics["epochs"] == 2 and metrics["steps"] == 4
    # the evaluation under DDP counted every val pixel exactly once across the two ranks
    assert sum(map(sum, metrics["confusion_matrix"])) == 7 * 40 * 40 and metrics["num_samples"] == 7


def test_ddp_outputs_are_written_once_by_rank_zero(ddp_run):
    _, run = ddp_run
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(ckpts) == 2 and "last.ckpt" in ckpts and ckpts[0].startswith("best-epoch")
    assert len(list(run.rglob("metrics.json"))) == 1 and len(list(run.rglob("per_class.md"))) == 1
    # events.out.tfevents.TIME.HOST.PID.N: fit and test each open a writer, all in rank 0's process
    writers = {p.name.split(".")[-2] for p in (run / "tb").rglob("events.out.tfevents.*")}
    assert len(writers) == 1
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    val_epochs = [r["epoch"] for r in rows if r.get("val/miou")]
    assert val_epochs == ["0", "1"]  # one validation row per epoch, not one per rank


def test_ddp_metrics_equal_single_process_on_the_same_checkpoint(ddp_run):
    root, run = ddp_run
    best = next((run / "checkpoints").glob("best-epoch*.ckpt"))
    out = root / "eval-single"
    _ok(run_cli("eval", f"ckpt={best}", f"hydra.run.dir={out}", "datamodule.num_workers=0", "trainer.devices=1",
                f"paths.data_dir={root / 'data'}"))
    single = json.loads((out / "metrics.json").read_text())
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["confusion_matrix"] == single["confusion_matrix"]
    assert ddp["miou"] == single["miou"]


def test_ddp_resume_continues_from_last_checkpoint(ddp_run):
    import shutil

    root, run = ddp_run
    resumed_run = root / "resumed-run"
    shutil.copytree(run, resumed_run)  # the fixture's run stays as it is for the other tests
    # every_minutes: rank 0's clock decides, broadcast to the other rank, so both join every save
    _ok(run_cli("train", *DDP, f"paths.data_dir={root / 'data'}", "trainer.max_epochs=3",
                f"resume={resumed_run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={root / 'hydra'}",
                "checkpoint.every_minutes=0.0001", timeout=300))
    resumed = json.loads((resumed_run / "metrics.json").read_text())
    assert resumed["epochs"] == 3 and resumed["steps"] == 6
    epochs = [r["epoch"] for r in csv.DictReader(open(resumed_run / "logs" / "metrics.csv")) if r.get("val/miou")]
    assert epochs == ["0", "1", "2"]  # appended to the run's log: only the remaining epoch was trained
    assert torch.load(resumed_run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


# --------------------------------------------------------------------------- speed knobs

# two training steps and one validation batch on `tiny_shapes`
TINY = tiny("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
            base=TINY_ON_TINY_SHAPES)


def _train_in_process(tmp_path: Path, shard_dir: Path, overrides: list[str]) -> dict:
    from segframe.engine.training import train

    cfg = compose([*TINY, f"data.shard_dir={shard_dir}", *overrides])
    train(cfg, tmp_path)
    return json.loads((tmp_path / "metrics.json").read_text())


def _cuda_only(reason: str):
    return pytest.mark.skipif(not torch.cuda.is_available(), reason=reason)


KNOBS = [
    pytest.param(["module.channels_last=true"], id="channels_last"),
    pytest.param(["trainer.precision=bf16-mixed"], id="bf16-mixed"),
    pytest.param(["trainer.precision=16-mixed", "trainer.accelerator=gpu"], id="fp16-mixed",
                 marks=_cuda_only("fp16 autocast needs CUDA (Lightning refuses 16-mixed on CPU; use bf16-mixed)")),
    pytest.param(["trainer.benchmark=true", "trainer.accelerator=gpu"], id="cudnn.benchmark",
                 marks=_cuda_only("cudnn.benchmark tunes CUDA convolutions; it has nothing to tune on CPU")),
    pytest.param(["datamodule.pin_memory=true", "trainer.accelerator=gpu"], id="pin_memory",
                 marks=_cuda_only("pinned memory speeds host-to-GPU copies; without CUDA the loader does not pin")),
    pytest.param(["datamodule.num_workers=1", "datamodule.persistent_workers=true", "datamodule.prefetch_factor=4",
                  "trainer.max_epochs=2"], id="persistent_workers+prefetch"),
    pytest.param(["module.torch_compile=true"], id="torch_compile", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("overrides", KNOBS)
def test_speed_knob_composes_and_trains(tmp_path, tiny_shapes, overrides):
    metrics = _train_in_process(tmp_path, tiny_shapes, overrides)
    assert metrics["steps"] >= 2 and 0.0 <= metrics["miou"] <= 1.0
    ckpt = torch.load(next((tmp_path / "checkpoints").glob("best-epoch*.ckpt")), weights_only=True)
    # the knobs change how the model runs, never what a checkpoint holds
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    if "module.channels_last=true" in overrides:  # the knob took effect: NHWC convolution weights
        conv = next(v for k, v in ckpt["state_dict"].items() if v.dim() == 4 and v.shape[-1] > 1)
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@_cuda_only("pinned memory speeds host-to-GPU copies; without CUDA the loader does not pin")
def test_pin_memory_moves_channels_last_uint8_batches_intact(tiny_shapes):
    """SegDataModule's batches (channels-last uint8 images, uint8 masks) pinned, copied to the GPU and
    made model input there equal the CPU's, in both layouts the model may ask for."""
    from segframe.data.augment import default_train, identity
    from segframe.data.datamodule import SegDataModule
    from segframe.models.base import to_input

    dm = SegDataModule(str(tiny_shapes), default_train(crop_size=40), identity(), batch_size=4, num_workers=1,
                       pin_memory=True)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.is_pinned() and masks.is_pinned() and masks.dtype == torch.uint8
    moved = (images.cuda(non_blocking=True), masks.cuda(non_blocking=True))
    gpu_images, gpu_masks = dm.on_after_batch_transfer(moved, 0)
    assert gpu_masks.dtype == torch.int64 and torch.equal(gpu_masks.cpu(), masks.long())
    for layout in (torch.contiguous_format, torch.channels_last):
        x = to_input(gpu_images, layout)
        assert x.is_contiguous(memory_format=layout)
        torch.testing.assert_close(x.cpu(), to_input(images, layout), rtol=0, atol=1e-6)  # k / 255 on either device


def test_persistent_workers_reshuffle_every_epoch_like_fresh_workers(tiny_shapes):
    """Persistent workers keep the dataset copy they started with; the per-epoch shuffle must
    still move on, and give the very batches fresh workers give."""
    from segframe.data.augment import default_train, identity
    from segframe.data.datamodule import SegDataModule

    def epochs(persistent: bool) -> list[list[float]]:
        # the real augmentation: its random draws must follow the epoch too
        dm = SegDataModule(str(tiny_shapes), default_train(crop_size=32), identity(), batch_size=4, num_workers=2,
                           shuffle_buffer=8, persistent_workers=persistent, prefetch_factor=1)
        loader = dm.train_dataloader()
        out = []
        for epoch in range(3):
            dm.set_epoch(epoch)
            out.append([float(images.float().mean()) for images, _ in loader])
        return out

    fresh, persistent = epochs(False), epochs(True)
    assert persistent == fresh
    assert len({tuple(e) for e in fresh}) == 3  # every epoch its own order


def test_a_resumed_run_continues_with_its_own_epoch_order(tiny_shapes):
    """Lightning starts the first epoch's loader before on_train_epoch_start (set_epoch): a run
    resumed at epoch 2 must read epoch 2's order, not replay epoch 0's."""
    from types import SimpleNamespace

    from segframe.data.augment import identity
    from segframe.data.datamodule import SegDataModule

    def first_pass(current_epoch: int, set_epoch: int | None) -> list[float]:
        dm = SegDataModule(str(tiny_shapes), identity(), identity(), batch_size=4, num_workers=1, shuffle_buffer=8)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=current_epoch)
        loader = dm.train_dataloader()
        if set_epoch is not None:
            dm.set_epoch(set_epoch)
        return [float(images.float().mean()) for images, _ in loader]

    assert first_pass(2, None) == first_pass(0, 2) != first_pass(0, None)


def test_auto_convert_waits_for_a_conversion_already_running(tmp_path):
    """DDP ranks started by torchrun/srun (or parallel sweep jobs) on an unconverted dataset:
    one converts, the others wait for it and read its manifest instead of failing or converting twice."""
    import shutil
    import threading
    import time

    from segframe.data.shard_writer import _ConversionLock, write_dataset
    from segframe.data.sources.shapes import CLASSES, PALETTE, ShapesSource
    from segframe.data.preparation import ensure_converted

    cfg = compose([f"paths.data_dir={tmp_path}", "data.source.num_train=8", "data.source.num_val=4",
                   "data.source.size=32"])
    out = Path(cfg.data.shard_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    result: list = []
    with _ConversionLock(out):  # "another process" is converting
        waiter = threading.Thread(target=lambda: result.append(ensure_converted(cfg.data)))
        waiter.start()
        time.sleep(2.0)
        assert waiter.is_alive() and not out.exists()  # waiting, not converting
        write_dataset(ShapesSource(num_train=8, num_val=4, size=32), tmp_path / "elsewhere", "shapes", CLASSES, PALETTE)
        shutil.move(tmp_path / "elsewhere", out)
        (out / "marker").write_text("converted by the lock holder")
    waiter.join(timeout=30)
    assert result and result[0]["splits"]["train"]["num_samples"] == 8
    assert (out / "marker").is_file()  # the waiter read that conversion, it did not convert again


def test_torchrun_launch_as_documented_with_unconverted_data(tmp_path):
    """The torchrun line on one node of docs/scaling.md: torchrun starts both processes (Lightning starts
    none), both find the dataset unconverted at once, one converts it, and training runs under DDP."""
    import os
    import subprocess
    import sys

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args = [a for a in DDP if not a.startswith("datamodule.num_workers")] + ["datamodule.num_workers=0"]
    res = subprocess.run([*torchrun, "-m", "segframe.train", *args, "trainer.max_epochs=1",
                          f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}"],
                         cwd=REPO, env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}, capture_output=True, text=True,
                         timeout=300)
    _ok(res)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and sum(map(sum, metrics["confusion_matrix"])) == 7 * 40 * 40
    # both ranks found it missing; exactly one converted it (the other waited or found it done)
    assert (res.stdout + res.stderr).count("converted shapes into") == 1
