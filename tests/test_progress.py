"""Progress with an ETA on the long commands (issue 26, item 5), and its form where the output is not a
terminal (CI logs, `> log.txt`): lines, never a wall of carriage returns. run_cli captures the output,
so the CLI runs here see what a CI log sees."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ProgressBar, RichProgressBar

from segframe.deploy import exporting

from segframe.engine import progress_bar

from segframe.experiments import reproduction
from segframe.core.progress import Eta, clock, is_terminal, track

from helpers.cli import ok, run_cli
from helpers.config import TINY_ON_TINY_SHAPES, compose, tiny

ETA = re.compile(r"ETA \d+:\d\d")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_clock_and_eta():
    assert (clock(5), clock(65), clock(3725)) == ("0:05", "1:05", "1:02:05")
    eta = Eta(10)
    eta.start -= 4.0  # 4 s for the first 2: 16 s for the other 8
    assert eta.text(2, "img").startswith("2/10 img (20%), 0:04 elapsed, ETA 0:1")
    assert Eta(10, skipped=2).left(2) is None  # nothing timed yet (a resumed run's earlier epochs do not count)
    assert "ETA" not in eta.text(10) and Eta(None).text(3, "it").startswith("3 it, 0:0")  # done / no total
    assert not is_terminal(io.StringIO()) and is_terminal(_Terminal()) and not is_terminal(None)


def test_track_logs_a_line_per_tenth_not_a_bar_when_the_stream_is_not_a_terminal():
    lines: list[str] = []
    assert list(track(range(95), 95, "voc/train", "img", stream=io.StringIO(), quiet_s=0, say=lines.append)) \
        == list(range(95))
    assert len(lines) == 10 and lines[0].startswith("voc/train: 10/95 img (11%), 0:00 elapsed, ETA 0:00")
    assert lines[-1].startswith("voc/train: 95/95 img (100%)") and "ETA" not in lines[-1]
    lines.clear()
    list(track(range(95), 95, "quick", stream=io.StringIO(), say=lines.append))  # under quiet_s: how it ended
    assert len(lines) == 1 and lines[0].startswith("quick: 95/95 it (100%)")
    lines.clear()
    list(track(range(7), None, "no total", stream=io.StringIO(), quiet_s=0, say=lines.append))
    assert len(lines) == 1 and lines[0].startswith("no total: 7 it")
    terminal = _Terminal()  # in a terminal: tqdm's bar, with its ETA (the remaining time after '<')
    list(track(range(5), 5, "bar", stream=terminal, say=lines.append))
    assert "\r" in terminal.getvalue() and "5/5" in terminal.getvalue() and "<00:00" in terminal.getvalue()


def test_the_trainer_gets_epoch_lines_only_where_stdout_is_not_a_terminal(monkeypatch):
    from segframe.engine import components

    assert [type(c) for c in progress_bar.for_console(True, [])] == [progress_bar.EpochLines]
    assert progress_bar.for_console(False, []) == []  # enable_progress_bar=false: Lightning refuses a bar callback
    assert progress_bar.for_console(True, [RichProgressBar()]) == []  # the user's own bar wins
    cfg = compose(["trainer.accelerator=cpu", "trainer.precision=32-true"])
    bars = lambda t: [type(c).__name__ for c in t.callbacks if isinstance(c, ProgressBar)]
    assert bars(components.trainer(cfg.trainer, Path("."), [], False)) == ["EpochLines"]
    cfg.trainer.enable_progress_bar = False
    assert bars(components.trainer(cfg.trainer, Path("."), [], False)) == []
    cfg.trainer.enable_progress_bar = True
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert bars(components.trainer(cfg.trainer, Path("."), [], False)) in (["RichProgressBar"], ["TQDMProgressBar"])


def test_epoch_lines_in_a_fit_and_a_test(tmp_path):
    """In process: a line per epoch, validation scores only after an epoch that validated, a line per
    test, and inside a loop a line each every_s seconds (0 here: each batch)."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, _):
            loss = self.layer(batch[0]).pow(2).mean()
            self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
            return loss

        def validation_step(self, batch, _):
            self.log("val/miou", 0.25, prog_bar=True)

        def test_step(self, batch, _):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2)
    lines: list[str] = []
    trainer = pl.Trainer(max_epochs=3, check_val_every_n_epoch=2, callbacks=[progress_bar.EpochLines(say=lines.append)],
                         logger=False, enable_checkpointing=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(Tiny(), data, data)
    assert [line.split(",")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert lines[0].startswith("epoch 1/3, step 4 (+4), train/loss ") and "val/" not in lines[0]
    assert "val/miou 0.25" in lines[1] and "val/" not in lines[2]  # epoch 2 validated, 1 and 3 did not
    assert all(ETA.search(line) and "this epoch" in line and "elapsed" in line for line in lines)
    lines.clear()
    trainer.test(Tiny(), data, verbose=False)
    assert len(lines) == 1 and lines[0].startswith("test: 4 batches, 0:0")
    beats: list[str] = []
    pl.Trainer(max_epochs=1, callbacks=[progress_bar.EpochLines(every_s=0, say=beats.append)], logger=False,
               enable_checkpointing=False, enable_model_summary=False, default_root_dir=str(tmp_path)
               ).fit(Tiny(), data, data)
    assert beats[0].startswith("epoch 1/1, batch 1/4 (25%)") and "train/loss" in beats[0]
    assert any(b.startswith("epoch 1/1, validation batch 4/4") for b in beats)


@pytest.mark.slow  # a CLI training (~25 s on 2 busy cores): CI runs it with the slow set; the in-process test above
def test_a_training_through_the_cli_logs_a_line_per_epoch_and_no_carriage_return(tiny_shapes, tmp_path):
    res = run_cli("train", *tiny("trainer.max_epochs=2", "trainer.limit_train_batches=2",
                                 "trainer.enable_progress_bar=true", base=TINY_ON_TINY_SHAPES),
                  f"data.shard_dir={tiny_shapes}", f"hydra.run.dir={tmp_path / 'run'}")
    ok(res)
    out = res.stdout + res.stderr
    assert "\r" not in out and "Epoch 1/1" not in out  # not Lightning's bar
    epochs = [line for line in out.splitlines() if re.search(r"\] - epoch \d+/2, step", line)]
    assert [re.search(r"epoch \d+/2", line).group() for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all(ETA.search(line) and "val/miou" in line and "train/loss" in line for line in epochs)
    assert re.search(r"test: \d+ batches, \d+:\d\d elapsed", out)  # the final evaluation
    assert "epoch 2/2, step 4 (+2)" in (tmp_path / "run" / "train.log").read_text()  # the run's log keeps them


def test_convert_through_the_cli_prints_a_few_lines_and_no_carriage_return(tmp_path):
    res = run_cli("convert", "data=shapes", f"paths.data_dir={tmp_path}", "data.source.num_train=40",
                  "data.source.num_val=10")
    ok(res)
    out = res.stdout + res.stderr
    progress = [line for line in out.splitlines() if re.search(r"shapes/(train|val): \d+/\d+ img", line)]
    assert "\r" not in out and 2 <= len(progress) <= 22  # at most each tenth of each split, and how it ended
    assert any("shapes/train: 40/40 img (100%)" in line for line in progress)


def test_reproduce_says_each_runs_place_and_the_time_left(monkeypatch, tmp_path):
    def fake_run(name, seed, out, overrides, log, fold=None):
        return {"seed": seed, "fold": fold, "ok": True}

    monkeypatch.setattr(reproduction, "train_run", fake_run)
    lines: list[str] = []
    runs = reproduction.train_runs("tiny16", [0, 1], [0, 1], tmp_path, [], log=lines.append)
    assert [(r["fold"], r["seed"]) for r in runs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert lines[0] == "run 1/4 (tiny16, seed 0, fold 0)"  # nothing timed yet: no ETA
    assert lines[3].startswith("run 4/4 (tiny16, seed 1, fold 1), 0:00 elapsed, ETA 0:00")
    assert lines[-1].startswith("4 run(s) of tiny16 in ")
    assert reproduction.train_runs("tiny16", [3], [None], tmp_path, [], log=lines.append)[0]["seed"] == 3
    assert lines[-2] == "run 1/1 (tiny16, seed 3)"


def test_export_parity_says_each_batch(monkeypatch, tmp_path):
    wrapper = exporting.Deployable(torch.nn.Conv2d(3, 2, 1)).eval()
    monkeypatch.setattr(exporting, "_runner", lambda path, kind: wrapper)  # the "graph": eager itself
    lines: list[str] = []
    numbers = exporting.parity(wrapper, tmp_path / "m.onnx", "onnx", exporting.parity_images(), "parity (dynamo)",
                               say=lines.append)
    assert numbers["max_abs_logit_diff"] == 0.0 and len(lines) == len(exporting.PARITY_SIZES)
    assert lines[0].startswith("parity (dynamo): 1/3 batches (33%), 0:00 elapsed") and lines[0].endswith("[2x3x37x53]")
    assert ETA.search(lines[1]) and "ETA" not in lines[2]
