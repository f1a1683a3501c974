"""A resumed run's accounting and messages (issue 28, items 5 and 6): metrics.json and MODEL_CARD.md report
the whole run's fit time and training images over all of its processes; `resume=auto` on a finished run
says so and leaves its results alone; a resume from inside an epoch says what segframe does instead of
Lightning's "dataloader is not resumable" warning.

In process on `tiny_shapes` (the default suite), then the way a user meets it: `experiment=quickstart`
SIGKILLed inside an epoch and resumed with `resume=auto` (tests/test_resume.py's probe and helpers)."""

from __future__ import annotations

import json
import logging
import signal
import warnings
from pathlib import Path

import pytest

from helpers.config import TINY_ON_TINY_SHAPES, compose, tiny

# 24 train images, batch 4: 6 steps an epoch
QUICKSTART = ["experiment=quickstart", *TINY_ON_TINY_SHAPES, "scheduler.warmup_iters=1"]
NOT_RESUMABLE = "dataloader is not resumable"


def results(run: Path) -> dict[str, bytes]:
    """What a finished run reported: metrics.json, the model card and every checkpoint, byte for byte."""
    files = [run / "metrics.json", run / "MODEL_CARD.md", *sorted((run / "checkpoints").iterdir())]
    return {str(f.relative_to(run)): f.read_bytes() for f in files}


def train_here(run: Path, shards: Path, *overrides: str) -> float:
    from segframe.engine.training import train

    return train(compose([*QUICKSTART, f"data.shard_dir={shards}", *overrides]), run)


class Killed(Exception):
    """Stands in for a SIGKILL in process: raised at the start of a training step."""


def test_a_resumed_process_adds_its_time_and_images_to_the_runs(tmp_path, tiny_shapes, one_thread):
    first = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    train_here(tmp_path, tiny_shapes, *first)
    before = json.loads((tmp_path / "metrics.json").read_text())
    assert before["fit_processes"] == 1 and before["train_images"] == 2 * 4
    assert before["fit_seconds_per_process"] == [before["fit_seconds"]]
    # a second process continues the run for another epoch
    train_here(tmp_path, tiny_shapes, "trainer.max_epochs=2", *first[1:], "resume=auto")
    after = json.loads((tmp_path / "metrics.json").read_text())
    assert after["steps"] == 4 and after["fit_processes"] == 2 and after["train_images"] == 4 * 4
    seconds = after["fit_seconds_per_process"]
    # the first process counts up to the checkpoint the second resumed from, written as its fit ended (the
    # checkpoint cannot hold the time of its own writing)
    assert 0.5 * before["fit_seconds"] < seconds[0] <= before["fit_seconds"]
    assert after["fit_seconds"] == pytest.approx(sum(seconds), abs=0.05) and after["fit_seconds"] > seconds[1]
    assert after["train_images_per_s"] == round(16 / after["fit_seconds"], 2)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert f"over 2 processes (resumed 1x; {seconds[0]} s + {seconds[1]} s)" in card
    assert f"| training images/s | {after['train_images_per_s']} (16 images trained / fit time) |" in card


def test_resume_auto_on_a_finished_run_says_so_and_leaves_its_results_alone(tmp_path, tiny_shapes, one_thread,
                                                                              caplog):
    limits = ("trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    miou = train_here(tmp_path, tiny_shapes, *limits)
    reported = results(tmp_path)
    with caplog.at_level(logging.INFO, logger="segframe"):
        assert train_here(tmp_path, tiny_shapes, *limits, "resume=auto") == miou
    assert results(tmp_path) == reported
    assert f"{tmp_path} already finished" in caplog.text and str(tmp_path / "metrics.json") in caplog.text
    assert "resuming" not in caplog.text and "evaluating" not in caplog.text


def test_a_mid_epoch_resume_says_what_it_skips_instead_of_lightnings_warning(tmp_path, tiny_shapes, one_thread,
                                                                              monkeypatch, caplog):
    from segframe.engine.module import SegModule

    step = SegModule.training_step

    def killed_at_8(self, batch, batch_idx):
        if self.global_step == 8:  # epoch 1 after 2 of its 6 batches; last.ckpt holds step 8
            raise Killed
        return step(self, batch, batch_idx)

    every_step = ("trainer.max_epochs=2", "checkpoint.every_n_steps=1", "trainer.limit_val_batches=1")
    monkeypatch.setattr(SegModule, "training_step", killed_at_8)
    with pytest.raises(Killed):
        train_here(tmp_path, tiny_shapes, *every_step)
    monkeypatch.setattr(SegModule, "training_step", step)
    with caplog.at_level(logging.INFO, logger="segframe"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_here(tmp_path, tiny_shapes, *every_step, "resume=auto")
    assert not [w for w in caught if NOT_RESUMABLE in str(w.message)]
    assert "resumed mid-epoch at step 8: skipping the 2 batches already trained in epoch 1" in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text())["train_images"] == 12 * 4  # each step once


def test_an_end_of_epoch_resume_keeps_lightnings_warning_filter_untouched(tmp_path):
    """Only a resume from inside an epoch silences anything, and only that one message."""
    from segframe.engine.resume import NOT_RESUMABLE as MESSAGE, ResumePoint, mid_epoch_resume

    at_epoch_end = ResumePoint(tmp_path / "last.ckpt", tmp_path, step=6)
    inside = ResumePoint(tmp_path / "last.ckpt", tmp_path, step=8, mid_epoch=(1, 2))
    for point, silenced in ((None, False), (at_epoch_end, False), (inside, True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with mid_epoch_resume(point):
                warnings.warn(f"{MESSAGE}. This can cause unreliable results", UserWarning, stacklevel=1)
                warnings.warn("another warning", UserWarning, stacklevel=1)
        assert [str(w.message) for w in caught][-1] == "another warning"
        assert (len(caught) == 1) == silenced


# --------------------------------------------------------------------------- the user's way: a real SIGKILL


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """`python -m segframe.train experiment=quickstart` with a checkpoint every step, SIGKILLed inside its
    second epoch, then the same command with resume=auto: (run dir, first probe log, second probe log)."""
    import test_resume as probe

    root = tmp_path_factory.mktemp("accounting")
    run, first, second = root / "run", root / "first.jsonl", root / "second.jsonl"
    recipe = ("experiment=quickstart", "scheduler.warmup_iters=1", "checkpoint.every_n_steps=1")
    proc = probe.start(run, root / "data", first, *recipe, sleep=0.5)
    probe.signal_at(proc, first, epoch=1, batch=3, signum=signal.SIGKILL)
    proc.wait(timeout=60)
    probe.finish(probe.start(run, root / "data", second, *recipe, "resume=auto", sleep=0.5), second)
    return run, probe.batches(first), probe.batches(second), Path(f"{second}.out").read_text()


@pytest.mark.slow
def test_a_killed_and_resumed_quickstart_reports_the_time_of_both_processes(killed_and_resumed):
    import test_resume as probe

    run, first, second, _ = killed_and_resumed
    m = json.loads((run / "metrics.json").read_text())
    resumed_at = second[0]["step"]  # where the second process started: last.ckpt's step
    steps = probe.STEPS_PER_EPOCH * probe.EPOCHS
    assert probe.STEPS_PER_EPOCH < resumed_at < 2 * probe.STEPS_PER_EPOCH and m["steps"] == steps
    assert m["fit_processes"] == 2 and m["train_images"] == steps * 4  # the lost steps' images count once
    # each process's training steps (0.5 s each here) lie inside its counted seconds: the first one's up to
    # the checkpoint it wrote after step `resumed_at - 1`, the second one's all of them
    trained_first = [b["t"] for b in first if b["step"] < resumed_at]
    first_s, second_s = m["fit_seconds_per_process"]
    assert first_s > trained_first[-1] + 0.5 - trained_first[0] and first_s > 0.5 * resumed_at
    assert second_s > second[-1]["t"] + 0.5 - second[0]["t"] and second_s > 0.5 * (steps - resumed_at)
    assert m["fit_seconds"] == pytest.approx(first_s + second_s, abs=0.05)
    assert m["train_images_per_s"] == round(m["train_images"] / m["fit_seconds"], 2)
    assert "over 2 processes" in (run / "MODEL_CARD.md").read_text()


@pytest.mark.slow
def test_a_killed_quickstart_resumed_mid_epoch_says_what_it_skipped(killed_and_resumed):
    import test_resume as probe

    _, _, second, out = killed_and_resumed
    resumed_at = second[0]["step"]
    assert NOT_RESUMABLE not in out
    assert (f"resumed mid-epoch at step {resumed_at}: skipping the {resumed_at - probe.STEPS_PER_EPOCH} batches "
            f"already trained in epoch 1") in out


@pytest.mark.slow
def test_resume_auto_on_the_finished_quickstart_changes_nothing(killed_and_resumed):
    from helpers.cli import run_cli

    run = killed_and_resumed[0]
    reported = results(run)
    res = run_cli("train", *__import__("test_resume").RECIPE, "experiment=quickstart", "scheduler.warmup_iters=1",
                  "checkpoint.every_n_steps=1", f"paths.data_dir={run.parent / 'data'}", f"hydra.run.dir={run}",
                  "resume=auto")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"{run} already finished" in res.stdout + res.stderr and str(run / "metrics.json") in res.stdout + res.stderr
    assert results(run) == reported


def test_a_report_of_a_shorter_fit_is_not_taken_for_a_finished_run(tmp_path):
    """A run extended (trainer.max_epochs raised) and killed during its final evaluation: last.ckpt has
    the longer fit done, metrics.json and the card are the shorter fit's. That is not "already finished":
    the longer fit must still be evaluated and reported."""
    import json

    import torch

    from segframe.engine.resume import find_resume

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 2}}}}, "global_step": 12},
               ckpts / "last.ckpt")
    config = {"trainer": {"max_epochs": 2, "max_steps": -1}}
    for steps, finished in ((6, False), (12, True)):
        (tmp_path / "run" / "metrics.json").write_text(json.dumps({"steps": steps, "miou": 0.5}))
        (tmp_path / "run" / "MODEL_CARD.md").write_text("card")
        point = find_resume(str(ckpts / "last.ckpt"), tmp_path / "run", config)
        assert point.finished is finished, steps
