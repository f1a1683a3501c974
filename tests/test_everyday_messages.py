"""Messages users met on the everyday paths (issue 28, item 7), through the real CLI: a misspelt key
gets "did you mean" and never a `+` that adds the typo; a damaged weights file is named; on_bad=skip
names what it skipped; a fresh data folder prints no Hydra search-path warning; `--help` lists the
user's own datasets."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers.cli import run_cli


@pytest.mark.parametrize("command, given, meant", [
    ("train", "trainer.max_epoch=1", "did you mean trainer.max_epochs=1"),
    ("train", "datamodule.batchsize=2", "did you mean datamodule.batch_size=2"),
    ("train", "trainr.max_epochs=1", "did you mean trainer.max_epochs=1"),
    ("eval", "evl.split=val", "did you mean eval.split=val"),
])
def test_a_misspelt_key_gets_did_you_mean_and_no_plus(command, given, meant, tmp_path):
    res = run_cli(command, given, *(["ckpt=x.ckpt"] if command == "eval" else []), cwd=tmp_path)
    assert res.returncode == 1 and meant in res.stderr, res.stderr[-2000:]
    assert f"+{given}" not in res.stderr  # Hydra's advice added the typo, which then failed in the component
    assert not list(tmp_path.rglob("*.ckpt"))


def test_plus_is_advised_only_for_an_argument_the_config_leaves_unset():
    from omegaconf import OmegaConf

    from segframe.core.unknown_keys import advice

    cfg = OmegaConf.create({"trainer": {"_target_": "pytorch_lightning.Trainer", "max_epochs": 1}})
    assert advice(cfg, "trainer.detect_anomaly", "true").endswith("add it with +trainer.detect_anomaly=true")
    assert "+" not in advice(cfg, "trainer.max_epoch", "2")


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_a_damaged_pretrained_file_is_named(tmp_path):
    import torch

    whole = tmp_path / "whole.pth"
    torch.save({"w": torch.zeros(100)}, whole)
    cut = tmp_path / "resnet18-f37072fd.pth"
    cut.write_bytes(whole.read_bytes()[:200])  # a download that stopped half-way
    res = run_cli("train", "experiment=quickstart", f"model.pretrained={cut}", "trainer.max_steps=1",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 1
    assert f"model.pretrained={cut}: {cut} cannot be loaded as a weights file" in res.stderr, res.stderr[-2000:]
    assert "(while building `model`)" in res.stderr and "Error in call to target" not in res.stderr
    assert "damaged, truncated or not a torch file" in res.stderr and "weights_only" not in res.stderr
    res = run_cli("train", "experiment=quickstart", f"model.init_from={cut}", "trainer.max_steps=1",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 1 and f"model.init_from={cut}: {cut} cannot be loaded" in res.stderr, res.stderr[-2000:]
    assert "damaged, truncated or not a torch file" in res.stderr and "weights_only" not in res.stderr


def test_on_bad_skip_names_what_it_skipped(tmp_path):
    root = tmp_path / "raw"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / f"s{i}.png")
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "masks" / f"s{i}.png")
    for i in (1, 4):
        (root / "images" / f"s{i}.png").write_bytes(b"not a png")
    env = {"SEGFRAME_DATA": str(tmp_path / "data")}
    args = ["data=folder", "data.name=skips", f"data.root={root}", "data.classes=[a,b]", "data.val_fraction=0.2",
            "on_bad=skip", "num_workers=0"]
    res = run_cli("convert", *args, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipped 2 bad sample(s)" in res.stdout
    for i in (1, 4):
        assert f"images/s{i}.png + {root}/masks/s{i}.png: cannot decode image" in res.stdout
    for i in range(6):  # every sample bad: the error names them, it does not only say so
        (root / "images" / f"s{i}.png").write_bytes(b"not a png")
    res = run_cli("convert", *args, "data.name=allbad", env=env, cwd=tmp_path)
    assert res.returncode == 1 and "every sample was bad" in res.stderr and "images/s0.png" in res.stderr


def test_a_fresh_data_folder_prints_no_search_path_warning_and_help_lists_own_datasets(tmp_path):
    env = {"SEGFRAME_DATA": str(tmp_path / "data")}
    res = run_cli("train", "--help", env=env, cwd=tmp_path)
    assert res.returncode == 0 and "is not available" not in res.stderr
    assert "data, your own: none yet" in res.stdout
    own = tmp_path / "data" / "conf" / "data"
    own.mkdir(parents=True)
    (own / "cells.yaml").write_text("name: cells\n")
    for command in ("train", "eval", "convert"):
        res = run_cli(command, "--help", env=env, cwd=tmp_path)
        assert f"data, your own (in {own}): cells" in res.stdout, (command, res.stdout[:1500])
