"""Resuming a run whatever stopped it: SIGKILL inside an epoch, a kill during a checkpoint write, SLURM's
requeue signal. Real training subprocesses (tests/probe_train.py records every training batch), real
signals, then the resumed run is compared with an uninterrupted one batch by batch and metric by metric.

The recipe has no random augmentation and no dropout (ResNet-18), so on one machine an interrupted
and resumed run must equal the uninterrupted run exactly, wherever the checkpoint was taken."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.cli import REPO
from helpers.config import DDP, tiny

STEPS_PER_EPOCH, EPOCHS = 8, 3  # 32 train samples, batch 4
RECIPE = tiny("data.source.num_train=32", "datamodule.num_workers=2", "augmentation=none", "report.num_images=0",
              f"trainer.max_epochs={EPOCHS}")


def start(run: Path, data: Path, log: Path, *extra: str, sleep: float = 0.0, env: dict | None = None,
          ) -> subprocess.Popen:
    """`python -m segframe.train RECIPE ...` with the probe, its output in `<log>.out`."""
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PROBE_LOG": str(log), "PROBE_STEP_SLEEP": str(sleep),
                **(env or {})}
    out = open(f"{log}.out", "a")
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "probe_train.py"), *RECIPE, f"paths.data_dir={data}",
                             f"hydra.run.dir={run}", *extra], cwd=REPO, env=full_env, stdout=out,
                            stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen, log: Path, timeout: int = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, Path(f"{log}.out").read_text()[-5000:]


def batches(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def signal_at(proc: subprocess.Popen, log: Path, epoch: int, batch: int, signum: int = signal.SIGKILL,
              timeout: float = 300) -> None:
    """Send `signum` once the training batch (epoch, batch) has started."""
    deadline = time.time() + timeout
    while not any(b["epoch"] == epoch and b["batch"] >= batch for b in batches(log)):
        assert proc.poll() is None, f"the run ended before epoch {epoch} batch {batch}:\n" + \
            Path(f"{log}.out").read_text()[-3000:]
        assert time.time() < deadline, "training did not get there in time"
        time.sleep(0.02)
    proc.send_signal(signum)


def trained(first: list[dict], resumed: list[dict]) -> list[dict]:
    """What training saw over both processes: the first one's batches up to the checkpoint the second
    resumed from (later ones were lost with the kill and are trained again), then the second one's."""
    resumed_at = resumed[0]["step"]
    return [b for b in first if b["step"] < resumed_at] + resumed


def val_rows(run: Path) -> list[tuple[str, str]]:
    rows = csv.DictReader(open(run / "logs" / "metrics.csv"))
    return [(r["epoch"], r["val/loss"]) for r in rows if r.get("val/loss")]


def step_rows(run: Path) -> list[int]:
    return sorted(int(r["step"]) for r in csv.DictReader(open(run / "logs" / "metrics.csv")) if r.get("train/loss_step"))


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    """Data shared by this module's runs, and one uninterrupted run of the recipe."""
    root = tmp_path_factory.mktemp("resume")
    data, run, log = root / "data", root / "uninterrupted", root / "uninterrupted.jsonl"
    finish(start(run, data, log), log)
    seen = batches(log)
    assert [b["step"] for b in seen] == list(range(STEPS_PER_EPOCH * EPOCHS))
    return data, run, seen


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_sigkill_inside_an_epoch_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    data, uninterrupted, expected = reference
    run, first, second = tmp_path / "run", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    proc = start(run, data, first, sleep=0.15)
    signal_at(proc, first, epoch=1, batch=2)  # a few steps into epoch 1, as an OOM kill or a power cut would
    proc.wait(timeout=60)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # written at the end of epoch 0
    assert ckpt["global_step"] == STEPS_PER_EPOCH and isinstance(ckpt["run_config"], dict)

    # resume=PATH continues that run in its own directory, wherever this command's Hydra directory is
    elsewhere = tmp_path / "hydra-dir"
    finish(start(elsewhere, data, second, f"resume={last}"), second)
    assert not (elsewhere / "metrics.json").exists()
    result = metrics(run)
    assert result["steps"] == STEPS_PER_EPOCH * EPOCHS and result["epochs"] == EPOCHS  # the planned run
    assert result["resumed_from"] == str(last)
    assert [b["images"] for b in trained(batches(first), batches(second))] == [b["images"] for b in expected]
    # an epoch-boundary resume ends with exactly the uninterrupted run's metrics and best epoch
    assert result["confusion_matrix"] == metrics(uninterrupted)["confusion_matrix"]
    assert Path(result["checkpoint"]).name == Path(metrics(uninterrupted)["checkpoint"]).name
    # the same CSV, appended: one validation row per epoch with the same values, every step logged once
    assert val_rows(run) == val_rows(uninterrupted) and [e for e, _ in val_rows(run)] == ["0", "1", "2"]
    assert step_rows(run) == list(range(STEPS_PER_EPOCH * EPOCHS))
    # TensorBoard: the events logged after the checkpoint by the killed process are purged
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [7, 15, 23]
    assert sorted(e.step for e in events.Scalars("train/loss_step")) == list(range(STEPS_PER_EPOCH * EPOCHS))


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_mid_epoch_resume_sees_every_sample_of_the_interrupted_epoch_once(reference, tmp_path):
    data, uninterrupted, expected = reference
    run, first, second = tmp_path / "run", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    proc = start(run, data, first, "checkpoint.every_n_steps=3", sleep=0.15)
    signal_at(proc, first, epoch=1, batch=2)
    proc.wait(timeout=60)
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    # saved after epoch 1's first batch: an odd number of batches done, so with 2 loader workers the
    # resumed loader's worker 0 must make the batches worker 1 made
    assert step == STEPS_PER_EPOCH + 1

    finish(start(run, data, second, "checkpoint.every_n_steps=3", "resume=auto"), second)
    seen = trained(batches(first), batches(second))
    assert [b["step"] for b in seen] == list(range(STEPS_PER_EPOCH * EPOCHS))  # the step count continues
    epoch1 = [image for b in seen if b["epoch"] == 1 for image in b["images"]]
    every_sample = {image for b in expected if b["epoch"] == 0 for image in b["images"]}
    assert len(every_sample) == 32 and sorted(epoch1) == sorted(every_sample)  # each once: none twice, none skipped
    # in the epoch's own seeded order, and so (no random augmentation here) the same run exactly
    assert [b["images"] for b in seen] == [b["images"] for b in expected]
    assert metrics(run)["confusion_matrix"] == metrics(uninterrupted)["confusion_matrix"]
    assert val_rows(run) == val_rows(uninterrupted)


@pytest.mark.slow  # the in-process atomic-write test below checks the same mechanism in the default run
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(reference, tmp_path):
    data, _, _ = reference
    run, first, second = tmp_path / "run", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    # saves at steps 2, 4, ...: the second one (step 4) stalls after writing its bytes, before fsync and rename
    proc = start(run, data, first, "checkpoint.every_n_steps=2", env={"PROBE_STALL_SAVE": "2"})
    deadline = time.time() + 120
    while "PROBE: stalling" not in Path(f"{first}.out").read_text():
        assert proc.poll() is None and time.time() < deadline, Path(f"{first}.out").read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    ckpts = run / "checkpoints"
    assert list(ckpts.glob(".last.ckpt.*.partial"))  # what the killed writer left, under another name
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 2

    finish(start(run, data, second, "checkpoint.every_n_steps=2", "resume=auto"), second)
    assert batches(second)[0]["step"] == 2
    assert metrics(run)["steps"] == STEPS_PER_EPOCH * EPOCHS
    assert not list(ckpts.glob(".*.partial"))


@pytest.mark.slow
def test_slurm_requeue_signal_saves_requeues_and_the_same_command_resumes(reference, tmp_path):
    """What a job with `#SBATCH --signal=SIGUSR1@90` meets at its time limit, with a stand-in scontrol."""
    data, uninterrupted, _ = reference
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
           "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "segframe", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    run, first, second = tmp_path / "run", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    command = ("resume=auto",)  # the job script's one command line, for the first start and every requeue
    proc = start(run, data, first, *command, sleep=0.15, env=env)
    signal_at(proc, first, epoch=1, batch=3, signum=signal.SIGUSR1)
    sent = time.time()
    assert proc.wait(timeout=120) == 0, Path(f"{first}.out").read_text()[-3000:]
    stopped_after = time.time() - sent
    out = Path(f"{first}.out").read_text()
    assert "resume=auto: no" in out and "starting a fresh run" in out  # nothing to resume yet
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert STEPS_PER_EPOCH < step < 2 * STEPS_PER_EPOCH  # saved at the step boundary after the signal
    assert not (run / "metrics.json").exists() and stopped_after < 60

    finish(start(run, data, second, *command, env=env), second)  # SLURM starts the same command again
    assert batches(second)[0]["step"] == step
    assert metrics(run)["steps"] == STEPS_PER_EPOCH * EPOCHS
    assert metrics(run)["confusion_matrix"] == metrics(uninterrupted)["confusion_matrix"]


# --------------------------------------------------------------------------- the pieces, in process


def test_resume_auto_and_paths_are_checked_before_anything_is_built(tmp_path):
    from segframe.engine.resume import ResumeError, find_resume

    assert find_resume(None, tmp_path, {}) is None
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / ".last.ckpt.123.partial").write_bytes(b"half a checkpoint")
    assert find_resume("auto", tmp_path, {}) is None  # nothing to resume: start fresh
    assert not list(ckpts.iterdir())  # and what a killed save left behind is gone
    with pytest.raises(ResumeError, match=r"resume=.*nope\.ckpt: no such checkpoint.*resume=auto"):
        find_resume(str(tmp_path / "nope.ckpt"), tmp_path, {})
    (ckpts / "last.ckpt").write_bytes(b"PK\x03\x04 not really")
    for resume in ("auto", str(ckpts / "last.ckpt")):
        with pytest.raises(ResumeError, match=r"last\.ckpt cannot be resumed from .*delete it"):
            find_resume(resume, tmp_path, {})


def test_atomic_save_that_fails_midway_keeps_the_previous_file(tmp_path):
    from segframe.engine.checkpointing import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError, match="disk full"):  # torch.save has written the tensors by then
        io.save_checkpoint({"step": 2, "w": torch.zeros(1000), "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_continued_csv_keeps_the_rows_before_the_checkpoint(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    from segframe.engine.resume import ResumePoint, continue_logs

    first = CSVLogger(str(tmp_path), name="logs", version="")
    for step in range(10):
        first.log_metrics({"train/loss": float(step)}, step=step)
    first.log_metrics({"val/miou": 0.5, "epoch": 0}, step=4)
    first.save()
    resumed = CSVLogger(str(tmp_path), name="logs", version="")
    continue_logs([resumed], ResumePoint(tmp_path / "last.ckpt", tmp_path, step=5))
    resumed.log_metrics({"train/loss": 50.0, "lr": 0.1}, step=5)  # a new column too
    resumed.save()
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3, 4, 4, 5]
    assert rows[5]["val/miou"] == "0.5" and rows[6]["train/loss"] == "50.0" and rows[6]["lr"] == "0.1"


def test_last_checkpoint_options_are_checked_and_time_decides_on_rank_zero(monkeypatch):
    from types import SimpleNamespace

    from segframe.engine.checkpointing import LastCheckpoint

    for bad in ({"every_n_steps": 0}, {"every_minutes": -1}):
        with pytest.raises(ValueError, match="checkpoint.every_"):
            LastCheckpoint("ckpts", **bad)
    every = LastCheckpoint("ckpts", every_minutes=1)
    clock = [1000.0]
    monkeypatch.setattr("segframe.engine.checkpointing.time.monotonic", lambda: clock[0])
    every._saved_at = 1000.0
    single = SimpleNamespace(world_size=1)
    assert every._agreed(single) == (False, False)
    clock[0] += 61
    assert every._agreed(single) == (True, False)
    # under DDP every rank takes rank 0's answer (its own clock may say otherwise)
    ddp = SimpleNamespace(world_size=2, strategy=SimpleNamespace(broadcast=lambda obj, src: (False, True)))
    assert every._agreed(ddp) == (False, True)


def test_best_checkpoint_tracking_survives_a_moved_run_directory(tmp_path):
    from segframe.engine.checkpointing import BestCheckpoint

    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    new.mkdir(parents=True)
    (new / "best-epoch003.ckpt").write_bytes(b"x")
    state = {"monitor": "val/miou", "best_model_score": torch.tensor(0.7), "dirpath": str(old),
             "best_model_path": str(old / "best-epoch003.ckpt"), "kth_best_model_path": str(old / "best-epoch003.ckpt"),
             "kth_value": torch.tensor(0.7), "best_k_models": {str(old / "best-epoch003.ckpt"): torch.tensor(0.7)},
             "last_model_path": "", "current_score": torch.tensor(0.6)}
    best = BestCheckpoint(dirpath=str(new), monitor="val/miou", mode="max")
    best.load_state_dict(state)
    assert best.best_model_path == str(new / "best-epoch003.ckpt") and float(best.best_model_score) == pytest.approx(0.7)
    assert list(best.best_k_models) == [str(new / "best-epoch003.ckpt")]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_yields_the_rest_of_its_seeded_order(tiny_shapes, workers):
    """24 samples, batch 4: 6 batches an epoch. Resumed after 3 of epoch 1's batches, the loader yields
    epoch 1's last 3 batches, then (the same loader, as Lightning reuses it) all of epoch 2."""
    from types import SimpleNamespace

    from segframe.data.augment import identity
    from segframe.data.datamodule import SegDataModule

    def passes(restored: dict | None, current_epoch: int) -> list[list[float]]:
        """Two passes of one train loader, as Lightning runs them: the first as built (a restart calls no
        on_train_epoch_start for the epoch it resumes in), the second after set_epoch(2)."""
        dm = SegDataModule(str(tiny_shapes), identity(), identity(), batch_size=4, num_workers=workers,
                           shuffle_buffer=8, persistent_workers=workers > 0)
        dm.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=current_epoch)
        if restored:
            dm.load_state_dict(restored)
        loader = dm.train_dataloader()
        first = [float(images.float().mean()) for images, _ in loader]
        dm.set_epoch(2)
        return [first, [float(images.float().mean()) for images, _ in loader]]

    fresh = passes(None, 1)
    assert len(fresh[0]) == 6 and fresh[0] != fresh[1]
    # built before Lightning restores its counters (current_epoch still 0): the datamodule's state says where
    assert passes({"epoch": 1, "batches_done": 3}, 0) == [fresh[0][3:], fresh[1]]
    # a checkpoint from the end of epoch 0: the loader starts at epoch 1
    assert passes({"epoch": 0, "batches_done": 6}, 0) == fresh


@pytest.mark.slow
def test_ddp_mid_epoch_resume_equals_the_uninterrupted_run(tmp_path):
    """2 gloo ranks x 2 loader workers, a checkpoint after every step. The run directory is copied
    when last.ckpt holds step 3 (epoch 1 after its first batch: an odd count, so the workers rotate);
    the copy, resumed, ends exactly as the run it was taken from."""
    import shutil

    args = [*DDP, "augmentation=none", "trainer.max_epochs=3", "checkpoint.every_n_steps=1",
            f"paths.data_dir={tmp_path / 'data'}"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    run, copy = tmp_path / "run", tmp_path / "copy"
    proc = subprocess.Popen([sys.executable, "-m", "segframe.train", *args, f"hydra.run.dir={run}"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and not copy.exists():
        try:
            step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"]
        except (FileNotFoundError, RuntimeError, KeyError):
            step = None
        if step == 3:
            shutil.copytree(run, copy)
        time.sleep(0.02)
    assert proc.wait(timeout=300) == 0 and copy.exists(), "no copy taken at step 3"
    res = subprocess.run([sys.executable, "-m", "segframe.train", *args, f"resume={copy / 'checkpoints' / 'last.ckpt'}",
                          f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert metrics(copy)["steps"] == metrics(run)["steps"] == 6
    assert metrics(copy)["confusion_matrix"] == metrics(run)["confusion_matrix"]
    assert val_rows(copy) == val_rows(run)
