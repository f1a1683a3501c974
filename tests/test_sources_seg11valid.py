"""The FCN paper's split of VOC + SBD (data=voc_aug data.split_mode=seg11valid): SBD train for
training, the 736 seg11valid images with VOC labels for evaluation, on tiny trees in the
datasets' real layouts."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate

from segframe.data.manifest import read_manifest
from segframe.data.shard_writer import write_dataset
from segframe.data.sources import voc
from segframe.core.errors import ConfigError, MissingFileError
from segframe.core.paths import REPO_ROOT

from helpers.cli import run_cli
from helpers.config import compose
from helpers.datasets import BT, BV, PT, PV, make_sbd, make_voc, read_split

# seg11valid ids of the fixture: one only in VOC, one also in SBD val (never one in SBD train)
SEG11 = ["pv_only", "pv_bv"]


def _list(tmp_path: Path, ids: list[str], name: str = "seg11valid.txt") -> Path:
    path = tmp_path / name
    path.write_text("".join(f"{i}\n" for i in ids))
    return path


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    """VOC labels draw class 1 (with void borders), SBD labels class 2 (no void)."""
    return make_voc(tmp_path / "raw", PT, PV, value=1), make_sbd(tmp_path / "raw", BT, BV, value=2)


def test_split_by_region():
    """Train = SBD train; val = seg11valid; SBD val and VOC train images outside seg11valid are in neither."""
    train, val = voc.seg11valid_split(PV, BT, SEG11)
    assert train == sorted(BT) and val == sorted(SEG11)
    assert not set(train) & set(val)
    assert not {"bv_only", "pt_only", "pt_bv", "pv_bt_bv"} - set(BT) & set(train)  # SBD val / VOC train: left out


@pytest.mark.parametrize("extra, message", [
    ("pv_bt", r"1 id\(s\) of the seg11valid list .* are in SBD train .*'pv_bt'.*training would see evaluation"),
    ("pv_bt_bv", r"are in SBD train"),
    ("bv_only", r"1 id\(s\) of the seg11valid list .* not in VOC's val list .*'bv_only'.*no VOC label"),
    ("pt_only", r"not in VOC's val list"),
])
def test_overlapping_or_unlabelled_lists_are_refused(extra, message):
    with pytest.raises(ConfigError, match=message):
        voc.seg11valid_split(PV, BT, SEG11 + [extra])


def test_label_sources_per_split(tmp_path):
    voc_base, sbd_base = _trees(tmp_path)
    source = voc.VOCAugSource(str(voc_base), str(sbd_base), split_mode="seg11valid",
                              seg11valid_list=str(_list(tmp_path, SEG11)))
    manifest = write_dataset(source, tmp_path / "out", "t", voc.CLASSES, voc.PALETTE, shard_size=3)
    train, val = read_split(tmp_path / "out", "train", 21), read_split(tmp_path / "out", "val", 21)
    assert sorted(train) == sorted(BT) and sorted(val) == sorted(SEG11)
    for image_id, (_, _, mask, _) in train.items():  # SBD labels: class 2, no void
        assert set(np.unique(mask)) == {0, 2}, image_id
    for image_id, (raw, _, mask, _) in val.items():  # VOC labels with their void borders, VOC 2012 images
        assert set(np.unique(mask)) == {0, 1, 255}, image_id
        assert raw["jpg"] == (voc_base / "JPEGImages" / f"{image_id}.jpg").read_bytes()
    options = manifest["source"]["options"]
    assert options["split_mode"] == "seg11valid" and len(options["seg11valid_sha256"]) == 64
    assert "not checked" in manifest["source"]["fingerprint"]["split_check"]  # partial lists


def test_published_sizes_are_checked(caplog):
    source = voc.VOCAugSource("v", "s", split_mode="seg11valid")
    source._check_sizes(voc.FULL_LIST_SIZES, (8498, 736))
    assert source.split_check == "matches the published split mode seg11valid sizes (8498, 736)"
    with caplog.at_level(logging.WARNING, logger="segframe"):
        source._check_sizes(voc.FULL_LIST_SIZES, (8498, 735))
    assert source.split_check.startswith("DIFFERS") and "(8498, 735) differ from the published (8498, 736)" in caplog.text


@pytest.mark.parametrize("value, mode", [(1, 1), ("2", 2), (3, 3), ("seg11valid", "seg11valid")])
def test_split_mode_values(value, mode):
    assert voc.checked_mode(value) == mode


@pytest.mark.parametrize("value", [4, "seg12valid", True, None, "two"])
def test_bad_split_modes_are_refused(value):
    with pytest.raises(ConfigError, match="data.split_mode must be 1, 2, 3 or seg11valid"):
        voc.VOCAugSource("v", "s", split_mode=value)


def test_missing_list_names_the_key(tmp_path):
    voc_base, sbd_base = _trees(tmp_path)
    source = voc.VOCAugSource(str(voc_base), str(sbd_base), "seg11valid", str(tmp_path / "nope.txt"))
    with pytest.raises(MissingFileError, match=r"nope\.txt is missing.*data\.seg11valid_list="):
        source.splits()


def test_the_shipped_list():
    """736 unique VOC ids (YYYY_NNNNNN, 2007-2011: VOC 2011 val), shipped as package data with its source."""
    text = voc.SEG11VALID_LIST.read_text()
    ids = text.splitlines()
    assert len(ids) == 736 == len(set(ids)) and text.endswith("\n")
    assert all(re.fullmatch(r"20(0[7-9]|1[01])_\d{6}", i) for i in ids), [i for i in ids if not re.fullmatch(r"\d{4}_\d{6}", i)]
    assert ids == sorted(ids) and {i[:4] for i in ids} == {"2007", "2008", "2009", "2010", "2011"}
    assert "fcn.berkeleyvision.org" in (voc.SEG11VALID_LIST.parent / "README.md").read_text()
    package_data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "lists/*.txt" in package_data["segframe.data"]


@pytest.mark.parametrize("stride, miou, second", [(32, 63.6, 62.84), (16, 65.0, 64.91), (8, 65.5, 65.49)])
def test_paper_experiments_use_it(stride, miou, second):
    cfg = compose([f"experiment=fcn{stride}s_voc_paper"])
    assert cfg.data.split_mode == "seg11valid" and Path(cfg.data.shard_dir).name == "voc_aug_modeseg11valid"
    source = instantiate(cfg.data.source)
    assert source.split_mode == "seg11valid" and source.valid_list == voc.SEG11VALID_LIST
    assert cfg.reference.mean.miou == miou and "346" not in cfg.reference.data
    also, cvpr = cfg.reference.also  # judged against the release; pytorch-fcn's runs and CVPR Table 2 shown
    assert also.name == "pytorch-fcn" and also.mean.miou == second and "wkentaro/pytorch-fcn" in also.source
    assert cvpr.name == "CVPR 2015" and "ORIGINAL recipe" in cvpr.source


def test_cli_converts_into_its_own_folder_and_refuses_another_list(tmp_path):
    _trees(tmp_path)
    common = ["data=voc_aug", "data.split_mode=seg11valid", f"paths.raw_dir={tmp_path / 'raw'}",
              f"paths.data_dir={tmp_path / 'data'}"]
    first = run_cli("convert", *common, f"data.seg11valid_list={_list(tmp_path, SEG11)}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    manifest = read_manifest(tmp_path / "data" / "voc_aug_modeseg11valid")
    assert manifest["splits"]["train"]["num_samples"] == len(BT) and manifest["splits"]["val"]["num_samples"] == 2
    other = [f"data.seg11valid_list={_list(tmp_path, ['pv_only'], 'other.txt')}"]
    again = run_cli("convert", *common, *other, cwd=tmp_path)
    assert again.returncode == 0 and "already converted" in again.stdout and "seg11valid_sha256" in again.stdout
    train = run_cli("train", *common, *other, "model.pretrained=false", cwd=tmp_path)
    assert train.returncode == 1 and "seg11valid_sha256" in train.stderr
    leaked = run_cli("convert", *common, f"data.seg11valid_list={_list(tmp_path, ['pv_bt'], 'bad.txt')}",
                     "data.shard_dir=" + str(tmp_path / "data" / "bad"), cwd=tmp_path)
    assert leaked.returncode == 1 and "are in SBD train" in leaked.stderr and "Traceback" not in leaked.stderr
    assert not (tmp_path / "data" / "bad").exists()
