"""Shared converter pieces: list-file splits, low-bit-depth masks, stale temporary directories, and
what every file-based converter (Cityscapes, ADE20K, Kvasir-SEG, folder) does alike: missing raw data,
config nodes."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from segframe.data.sample import SampleError, decode_mask
from segframe.data.shards import read_manifest, write_dataset
from segframe.data.sources.ade20k import ADE20KSource
from segframe.data.sources.cityscapes import CityscapesSource
from segframe.data.sources.files import DatasetNotFoundError, bit_palette, index_png_bytes, read_index_png
from segframe.data.sources.folder import FolderSource
from segframe.data.sources.kvasir import KvasirSegSource
from segframe.data.sources.splits import split_by_lists
from segframe.data.sources.voc import CLASSES, PALETTE, VOCSource

from helpers.cli import run_cli
from helpers.config import compose
from helpers.datasets import nothing_written

ITEMS = [(f"id{i}", f"images/id{i}.jpg", f"masks/id{i}.png") for i in range(4)]


def test_an_image_listed_in_two_splits_is_refused():
    with pytest.raises(SampleError, match=r"\['id1'\] listed in both 'train' and 'val'"):
        split_by_lists(ITEMS, {"train": ["id0", "id1"], "val": ["id1", "id2"]}, "lists")
    assert split_by_lists(ITEMS, {"train": ["id3", "id0"], "val": ["id2"]}, "lists")["train"] == [ITEMS[3], ITEMS[0]]


def test_kvasir_split_dir_without_val_list_says_what_is_missing(tmp_path):
    for sub in ("images", "masks"):
        (tmp_path / "Kvasir-SEG" / sub).mkdir(parents=True)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("a\n")
    with pytest.raises(DatasetNotFoundError, match=r"missing val\.txt[\s\S]*data\.split_dir="):
        KvasirSegSource(str(tmp_path / "Kvasir-SEG"), split_dir=str(tmp_path / "lists")).splits()


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_low_bit_depth_index_pngs_keep_their_class_ids(tmp_path, bits):
    """PIL scales 2/4-bit greyscale PNGs to 0..255 for display; a mask's values are class ids."""
    values = np.array([[0, 1, 1, 0], [1, 0, 0, 1]] if bits == 1 else [[0, 1, 2, 3], [3, 2, 1, 0]], np.uint8)
    path = tmp_path / "m.png"
    if bits == 1:
        Image.fromarray(values.astype(bool)).save(path)
    else:
        Image.fromarray(values).save(path, bits=bits)
    assert np.array_equal(read_index_png(path), values)
    kept = index_png_bytes(path)
    assert np.array_equal(decode_mask(kept) if isinstance(kept, bytes) else kept, values)
    assert isinstance(kept, bytes) == (bits == 8)  # only 8-bit PNGs are stored as they are


def test_stale_cleanup_leaves_other_datasets_alone(tmp_path):
    """`.cells.partial-PID` of a dead run is removed; `.cells.v2.partial-PID` belongs to dataset `cells.v2`."""
    base = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    for split, image_id in (("train", "a"), ("val", "b")):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
        Image.fromarray(np.zeros((8, 8), np.uint8), mode="P").save(base / "SegmentationClass" / f"{image_id}.png")
        (base / "ImageSets/Segmentation" / f"{split}.txt").write_text(f"{image_id}\n")
    out = tmp_path / "data" / "cells"
    out.parent.mkdir()
    dead = out.parent / ".cells.partial-999999999"
    sibling = out.parent / f".cells.v2.partial-{os.getpid()}"  # alive: this very process
    dead.mkdir()
    sibling.mkdir()
    write_dataset(VOCSource(str(base)), out, "cells", CLASSES, PALETTE)
    assert not dead.exists() and sibling.exists() and read_manifest(out)["splits"]["val"]["num_samples"] == 1


def test_decode_mask_refuses_rgb():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, "PNG")
    with pytest.raises(SampleError, match="mode 'RGB'"):
        decode_mask(buf.getvalue())


def test_list_files_keep_whole_stems_and_skip_a_bom(tmp_path):
    from segframe.data.sources.files import read_ids

    path = tmp_path / "val.txt"
    path.write_bytes("\ufeffcell 0\n\n  cell 1  \nzellé\n".encode("utf-8"))  # as Windows Notepad saves it
    assert read_ids(path) == ["cell 0", "cell 1", "zellé"]


def test_cli_folder_dataset_under_its_own_name(tmp_path):
    """Hints name the config file and the dataset (`data=folder data.name=cells`), and a rerun with
    other classes says the conversion no longer matches the config."""
    root = tmp_path / "cells"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 10, 3), 40 * i, np.uint8)).save(root / "images" / f"c{i}.png")
        Image.fromarray((np.arange(80).reshape(8, 10) % 2).astype(np.uint8)).save(root / "masks" / f"c{i}.png")
    common = ["data=folder", "data.name=cells", f"data.root={root}", f"paths.data_dir={tmp_path / 'data'}"]
    env = {"SEGFRAME_DATA": str(tmp_path / "data")}  # where the described data config goes
    first = run_cli("convert", *common, "data.classes=[bg,cell]", "data.val_fraction=0.25", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "look at it: python -m segframe.convert data=cells browse=true" in first.stdout
    again = run_cli("convert", *common, "data.classes=[bg,nucleus]", "data.val_fraction=0.25", cwd=tmp_path, env=env)
    assert again.returncode == 0 and "already converted" in again.stdout
    assert "it has classes ['bg', 'cell'] and the config now says ['bg', 'nucleus']" in again.stdout


# --------------------------------------------------------------------------- every file-based converter


@pytest.mark.parametrize("name, make, missing, url", [
    ("cityscapes", lambda r: CityscapesSource(r),
     ["leftImg8bit/train", "gtFine/train", "leftImg8bit/val", "gtFine/val"],
     "https://www.cityscapes-dataset.com/downloads/"),
    ("ade20k", lambda r: ADE20KSource(r), ["images/training", "annotations/training", "images/validation"],
     "http://sceneparsing.csail.mit.edu/"),
    ("kvasir_seg", lambda r: KvasirSegSource(r), ["images", "masks"], "https://datasets.simula.no/kvasir-seg/"),
    ("folder", lambda r: FolderSource(r), ["images", "masks"], "Put your files there so that it looks like"),
])
def test_missing_root(tmp_path, name, make, missing, url):
    root = tmp_path / "raw" / "not_there"
    out = tmp_path / "data" / name
    with pytest.raises(DatasetNotFoundError) as err:
        write_dataset(make(str(root)), out, name, ["a", "b"], bit_palette(2))
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    assert f"raw dataset not found or incomplete at {root}" in msg
    for rel in missing:
        assert rel in msg
    assert url in msg
    assert f"python -m segframe.convert data={name} data.root=" in msg
    nothing_written(out)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("name, cls", [("cityscapes", CityscapesSource), ("ade20k", ADE20KSource),
                                        ("kvasir_seg", KvasirSegSource), ("folder", FolderSource)])
def test_conf_source_nodes_instantiate(tmp_path, name, cls):
    overrides = [f"data={name}", f"data.root={tmp_path}", f"paths.data_dir={tmp_path / 'd'}"]
    if name == "folder":
        overrides.append("data.classes=[bg,fg]")
    cfg = compose(overrides, "convert")
    source = instantiate(cfg.data.source)
    assert type(source) is cls
    assert source.root == tmp_path
    assert cfg.data.shard_dir == str(tmp_path / "d" / name)
