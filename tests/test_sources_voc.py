"""VOC 2012, SBD and VOC-aug converters on tiny trees in the datasets' real on-disk layouts."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from segframe.data.sample import SampleError
from segframe.data.shards import read_manifest, verify, write_dataset
from segframe.data.sources import voc
from segframe.data.sources.files import DatasetNotFoundError

from helpers.cli import run_cli
from helpers.datasets import (BT, BV, PT, PV, load_data_yaml, make_sbd, make_voc, raw_samples, read_split, voc_image,
                              voc_label)


def _convert(source, out: Path, **kw):
    return write_dataset(source, out, "t", voc.CLASSES, voc.PALETTE, shard_size=3, **kw)


# --------------------------------------------------------------------------- VOC


def test_voc_converts_palette_indices_void_and_bytes(tmp_path):
    base = make_voc(tmp_path, ["2007_000032", "2007_000039", "2008_000002"], ["2007_000033", "2009_000001"], value=15)
    manifest = _convert(voc.VOCSource(str(base)), tmp_path / "out")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    samples = read_split(tmp_path / "out", "train", 21)
    assert sorted(samples) == ["2007_000032", "2007_000039", "2008_000002"]
    raw, image, mask, meta = samples["2007_000039"]
    # indices read as indices: person is 15 (its RGB colour is (192,128,128)), the outline stays 255
    expected = np.asarray(Image.open(base / "SegmentationClass" / "2007_000039.png"))
    assert np.array_equal(mask, expected) and set(np.unique(mask)) == {0, 15, 255}
    assert raw["jpg"] == (base / "JPEGImages" / "2007_000039.jpg").read_bytes()
    assert raw["seg.png"] == (base / "SegmentationClass" / "2007_000039.png").read_bytes()  # no re-encode
    assert meta["split"] == "train" and meta["source"].endswith("2007_000039.png")
    total = manifest["splits"]["train"]["class_pixels"]
    assert total[15] == sum(int((voc_label(15, i) == 15).sum()) for i in (0, 1, 2)) and total[1] == 0
    assert manifest["splits"]["train"]["ignore_pixels"] == sum(int((voc_label(15, i) == 255).sum()) for i in (0, 1, 2))
    lists = manifest["source"]["fingerprint"]["lists"]
    assert set(lists) == {"ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/val.txt"}
    assert manifest["source"]["fingerprint"]["files"] == 10 and verify(tmp_path / "out") == []


def test_voc_rgb_mask_is_refused_not_guessed(tmp_path):
    base = make_voc(tmp_path, ["a1", "a2"], ["b1"])
    Image.open(base / "SegmentationClass" / "a2.png").convert("RGB").save(base / "SegmentationClass" / "a2.png")
    with pytest.raises(SampleError, match=r"a2\.png is a PNG of mode 'RGB'"):
        _convert(voc.VOCSource(str(base)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_voc_root_says_where_to_download(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        voc.VOCSource(str(tmp_path / "nowhere")).splits()
    message = str(info.value)
    assert "host.robots.ox.ac.uk/pascal/VOC/voc2012" in message and "JPEGImages" in message
    assert "python -m segframe.convert data=voc data.root=" in message


def test_missing_image_listed_in_split_is_a_bad_sample(tmp_path):
    base = make_voc(tmp_path, ["a1", "a2", "a3"], ["b1"])
    (base / "JPEGImages" / "a2.jpg").unlink()
    with pytest.raises(SampleError, match=r"image file .*a2\.jpg is missing"):
        _convert(voc.VOCSource(str(base)), tmp_path / "out")
    manifest = _convert(voc.VOCSource(str(base)), tmp_path / "out", on_bad="skip")
    assert manifest["splits"]["train"]["num_samples"] == 2
    assert manifest["skipped"][0]["split"] == "train" and manifest["skipped"][0]["item"][0] == "a2"


# --------------------------------------------------------------------------- SBD


def test_sbd_reads_the_gtcls_struct(tmp_path):
    base = make_sbd(tmp_path, ["2008_000002", "2008_000003"], ["2008_000004"], value=7)
    manifest = _convert(voc.SBDSource(str(base)), tmp_path / "out")
    assert manifest["splits"]["train"]["num_samples"] == 2 and manifest["splits"]["val"]["num_samples"] == 1
    raw, _, mask, _ = read_split(tmp_path / "out", "val", 21)["2008_000004"]
    expected = voc_label(7, 2)
    expected[expected == 255] = 0
    assert np.array_equal(mask, expected)
    assert raw["jpg"] == (base / "img" / "2008_000004.jpg").read_bytes()


def test_corrupt_sbd_mat_names_the_file(tmp_path):
    base = make_sbd(tmp_path, ["x1", "x2"], ["y1"])
    (base / "cls" / "x2.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(SampleError, match=r"x2\.mat is not an SBD class file"):
        _convert(voc.SBDSource(str(base)), tmp_path / "out")
    scipy.io.savemat(str(base / "cls" / "x2.mat"), {"other": np.zeros((2, 2))})  # a MAT file without GTcls
    manifest = _convert(voc.SBDSource(str(base)), tmp_path / "out", on_bad="skip")
    assert [s["item"][0] for s in manifest["skipped"]] == ["x2"] and "GTcls" in manifest["skipped"][0]["problem"]


# --------------------------------------------------------------------------- VOC-aug


# every region of the Venn diagram of PT, PV, BT, BV (helpers.datasets) holds at least one id
EVERYTHING = set(PT) | set(PV) | set(BT) | set(BV)


@pytest.mark.parametrize("mode, val", [
    (1, {"pv_only", "pv_bt", "pv_bv", "pv_bt_bv"}),  # val = PV
    (2, {"pv_only", "pv_bv"}),  # val = PV \ BT
    (3, {"pv_only"}),  # val = PV \ (BV u BT)
])
def test_voc_aug_split_set_logic(mode, val):
    train, got_val = voc.voc_aug_split(PT, PV, BT, BV, mode)
    assert set(got_val) == val
    assert set(train) == EVERYTHING - val and not set(train) & set(got_val)
    assert train == sorted(train)


def test_voc_aug_bad_mode_is_refused():
    with pytest.raises(ValueError, match="split_mode must be 1, 2, 3 or seg11valid"):
        voc.VOCAugSource("v", "s", split_mode=4)


@pytest.mark.parametrize("mode", [1, 2, 3])
def test_voc_aug_label_sources(tmp_path, mode):
    """Train labels from SBD where SBD annotates the image, else VOC; val labels always VOC."""
    voc_base = make_voc(tmp_path, PT, PV, value=1)  # VOC labels draw class 1
    sbd_base = make_sbd(tmp_path, BT, BV, value=2)  # SBD labels draw class 2
    # images only SBD has (not in VOC's segmentation lists) come from VOC's JPEGImages when there
    for i, image_id in enumerate(sorted((set(BT) | set(BV)) - set(PT) - set(PV))):
        voc_image(voc_base / "JPEGImages" / f"{image_id}.jpg", 500 + i)
    source = voc.VOCAugSource(str(voc_base), str(sbd_base), split_mode=mode)
    manifest = _convert(source, tmp_path / "out")
    train_ids, val_ids = voc.voc_aug_split(PT, PV, BT, BV, mode)
    train, val = read_split(tmp_path / "out", "train", 21), read_split(tmp_path / "out", "val", 21)
    assert sorted(train) == train_ids and sorted(val) == val_ids
    for image_id, (raw, _, mask, _) in train.items():
        want = 2 if image_id in set(BT) | set(BV) else 1
        assert want in np.unique(mask) and (3 - want) not in np.unique(mask), image_id
        assert raw["jpg"] == (voc_base / "JPEGImages" / f"{image_id}.jpg").read_bytes()
    for image_id, (_, mask, _, _) in val.items():
        assert 1 in np.unique(mask) and 255 in np.unique(mask), image_id
    assert manifest["source"]["options"]["split_mode"] == mode
    assert "not checked" in manifest["source"]["fingerprint"]["split_check"]


def test_voc_aug_takes_sbd_images_when_voc_lacks_them(tmp_path):
    voc_base = make_voc(tmp_path, ["p1"], ["p2"])
    sbd_base = make_sbd(tmp_path, ["s1"], [])
    manifest = _convert(voc.VOCAugSource(str(voc_base), str(sbd_base)), tmp_path / "out")
    assert manifest["splits"]["train"]["num_samples"] == 2
    raw = raw_samples(tmp_path / "out", "train")["s1"]
    assert raw["jpg"] == (sbd_base / "img" / "s1.jpg").read_bytes()


def test_voc_aug_published_sizes_are_checked(caplog):
    source = voc.VOCAugSource("v", "s", split_mode=2)
    source._check_sizes(voc.FULL_LIST_SIZES, (11127, 904))
    assert source.split_check.startswith("matches")
    with caplog.at_level(logging.WARNING, logger="segframe"):
        source._check_sizes(voc.FULL_LIST_SIZES, (11126, 905))
    assert source.split_check.startswith("DIFFERS") and "differ from the published" in caplog.text


def test_voc_aug_missing_sbd_names_its_key(tmp_path):
    voc_base = make_voc(tmp_path, ["p1"], ["p2"])
    with pytest.raises(DatasetNotFoundError, match="data.sbd_root=") as info:
        voc.VOCAugSource(str(voc_base), str(tmp_path / "no_sbd")).splits()
    assert "home.bharathh.info" in str(info.value)


# --------------------------------------------------------------------------- configs and CLI


def test_voc_configs_match_the_converter():
    for name in ("voc", "sbd", "voc_aug"):
        cfg = load_data_yaml(name)
        assert list(cfg.classes) == list(voc.CLASSES) and [list(c) for c in cfg.palette] == voc.PALETTE
    # the VOC colour map: person (15) is (192, 128, 128), tvmonitor (20) is (0, 64, 128)
    assert voc.PALETTE[15] == [192, 128, 128] and voc.PALETTE[20] == [0, 64, 128]


def test_cli_convert_voc_aug_rerun_and_browse(tmp_path):
    voc_base = make_voc(tmp_path / "raw", PT, PV)
    make_sbd(tmp_path / "raw", BT, BV)
    for image_id in (set(BT) | set(BV)) - set(PT) - set(PV):
        voc_image(voc_base / "JPEGImages" / f"{image_id}.jpg", 7)
    common = ["data=voc_aug", f"paths.raw_dir={tmp_path / 'raw'}", f"paths.data_dir={tmp_path / 'data'}"]
    result = run_cli("convert", *common, "data.split_mode=3", "num_workers=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mode3 = tmp_path / "data" / "voc_aug_mode3"  # each split mode converts into its own folder
    manifest = read_manifest(mode3)
    assert manifest["splits"]["val"]["num_samples"] == 1
    assert manifest["splits"]["train"]["num_samples"] == len(EVERYTHING) - 1 == 8
    # pointed at mode-3 shards, another split mode is never silently taken for them
    again = run_cli("convert", *common, "data.split_mode=1", f"data.shard_dir={mode3}", cwd=tmp_path)
    assert again.returncode == 0 and "already converted" in again.stdout and "split_mode=3 (config: 1)" in again.stdout
    train = run_cli("train", *common, "data.split_mode=1", f"data.shard_dir={mode3}", "model.pretrained=false",
                    cwd=tmp_path)
    assert train.returncode == 1 and "was converted with split_mode=3 (config: 1)" in train.stderr
    grid = tmp_path / "look" / "grid.png"
    shown = run_cli("convert", *common, "data.split_mode=3", "browse=true", f"browse_file={grid}", "browse_count=3",
                    "browse_split=train", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    with Image.open(grid) as im:
        assert im.width == 3 * 256 and im.height > 256
    assert (tmp_path / "look" / "grid-class-pixels.png").is_file()


def test_cli_missing_dataset_exits_nonzero_with_url(tmp_path):
    result = run_cli("convert", "data=voc", f"paths.raw_dir={tmp_path}", f"paths.data_dir={tmp_path / 'd'}",
                     cwd=tmp_path)
    assert result.returncode == 1
    assert "host.robots.ox.ac.uk" in result.stderr and "ImageSets/Segmentation" in result.stderr
    assert not (tmp_path / "d" / "voc").exists()


_CRASH = """
import os, signal, sys
import segframe.data.sources.files as files
from segframe.data.sources.voc import VOCSource, CLASSES, PALETTE
from segframe.data.shards import write_dataset
real, calls = files.index_png_bytes, []
def dying(path):
    calls.append(path)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a crash, power loss or OOM kill mid-conversion
    return real(path)
import segframe.data.sources.voc as voc
voc.index_png_bytes = dying
write_dataset(VOCSource(sys.argv[1]), sys.argv[2], "voc", CLASSES, PALETTE, shard_size=1)
"""


def test_rerun_after_a_killed_conversion(tmp_path):
    import subprocess
    import sys

    base = make_voc(tmp_path / "raw", ["a1", "a2", "a3", "a4"], ["b1", "b2"])
    out = tmp_path / "data" / "voc"
    killed = subprocess.run([sys.executable, "-c", _CRASH, str(base), str(out)], capture_output=True, text=True,
                            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert killed.returncode == -9
    leftovers = sorted(p.name for p in (tmp_path / "data").iterdir())
    assert not out.exists() and len(leftovers) == 2 and leftovers[0] == ".voc.lock"
    assert leftovers[1].startswith(".voc.partial-")  # the dead process's lock was released by the OS
    result = run_cli("convert", "data=voc", f"data.root={base}", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".voc.lock", "voc"]
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["num_samples"] == 4 and verify(out) == []
    assert json.loads((out / "manifest.json").read_text())["source"]["options"]["root"] == str(base)


def test_converted_voc_trains_and_evaluates_like_any_dataset(tmp_path):
    """Variable-size VOC images with void borders go through the same train -> eval path as shapes."""
    base = make_voc(tmp_path / "raw", ["t1", "t2", "t3", "t4"], ["v1", "v2", "v3"], value=15)
    data = tmp_path / "data"
    assert run_cli("convert", "data=voc", f"data.root={base}", f"paths.data_dir={data}", cwd=tmp_path).returncode == 0
    run = tmp_path / "run"
    result = run_cli("train", "data=voc", f"paths.data_dir={data}", "model.backbone=resnet18", "model.pretrained=false",
                     "data.crop_size=32", "datamodule.batch_size=2", "datamodule.eval_batch_size=2",
                     "datamodule.num_workers=0", "trainer.max_epochs=1", "report.num_images=2",
                     "logger=none", "module.class_weighting=median_frequency", f"hydra.run.dir={run}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "voc" and metrics["num_samples"] == 3 and len(metrics["classes"]) == 21
    # every val pixel counted once, except the void (255) outlines
    labelled = sum(int((np.asarray(Image.open(base / "SegmentationClass" / f"{i}.png")) != 255).sum())
                   for i in ("v1", "v2", "v3"))
    assert sum(map(sum, metrics["confusion_matrix"])) == labelled
