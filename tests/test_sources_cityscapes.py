"""The Cityscapes converter on tiny fixtures in the dataset's real layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segframe.data.sample import IGNORE_INDEX, SampleError
from segframe.data.shards import write_dataset
from segframe.data.sources import cityscapes
from segframe.data.sources.cityscapes import CityscapesSource
from segframe.data.sources.files import DatasetNotFoundError

from helpers.datasets import H, W, load_data_yaml, nothing_written, read_split, rgb, save


# The official labelId -> trainId table (cityscapesScripts labels.py), written out independently.
OFFICIAL_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                     26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CS_FRAMES = {
    "train": [("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
              ("bochum", "bochum_000000_000313")],
    "val": [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")],
}


def _cs_labels(seed: int) -> np.ndarray:
    """A labelIds mask with void (0, 1, 4), classes (7 road, 26 car, 33 bicycle, ...) in known places."""
    rng = np.random.default_rng(seed)
    values = np.array([0, 1, 4, 7, 8, 11, 21, 23, 24, 26, 33], dtype=np.uint8)
    m = values[rng.integers(0, len(values), (H, W))]
    m[:4] = 7  # road band
    m[-2:] = 1  # ego vehicle
    return m


def _make_cityscapes(root: Path, frames=CS_FRAMES, extras: bool = True) -> dict[str, dict[str, tuple]]:
    """root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png + gtFine/<split>/<city>/<stem>_gtFine_*.
    Returns split -> stem -> (image path, labelIds)."""
    made: dict[str, dict[str, tuple[Path, np.ndarray]]] = {}
    seed = 0
    for split, entries in frames.items():
        made[split] = {}
        (root / "leftImg8bit" / split).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split).mkdir(parents=True, exist_ok=True)
        for city, stem in entries:
            seed += 1
            image = save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb(seed))
            labels = _cs_labels(seed)
            gt = root / "gtFine" / split / city
            save(gt / f"{stem}_gtFine_labelIds.png", labels)
            if extras:  # what real gtFine holds next to labelIds: must all be ignored
                save(gt / f"{stem}_gtFine_color.png", rgb(100 + seed))
                save(gt / f"{stem}_gtFine_instanceIds.png", (labels.astype(np.uint16) * 1000 + 1))  # 16-bit, as real
                polygons = {"imgHeight": H, "imgWidth": W, "objects": []}
                (gt / f"{stem}_gtFine_polygons.json").write_text(json.dumps(polygons))
            made[split][stem] = (image, labels)
    return made


def _official(labels: np.ndarray) -> np.ndarray:
    out = np.full(labels.shape, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in OFFICIAL_TRAIN_ID.items():
        out[labels == label_id] = train_id
    return out


def test_cityscapes_layout_remap_and_bytes(tmp_path):
    root = tmp_path / "raw" / "cityscapes"
    made = _make_cityscapes(root)
    out = tmp_path / "data" / "cityscapes"
    classes, palette = list(cityscapes.CLASSES), cityscapes.PALETTE
    manifest = write_dataset(CityscapesSource(str(root)), out, "cityscapes", classes, palette, shard_size=2)

    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    assert len(manifest["splits"]["train"]["shards"]) == 2  # 2 + 1 with shard_size=2
    assert manifest["skipped"] == []
    for split in ("train", "val"):
        got = read_split(out, split, 19)
        assert sorted(got) == sorted(made[split])
        pixels = np.zeros(19, dtype=np.int64)
        ignore = 0
        for stem, (image_path, labels) in made[split].items():
            sample, image, mask, meta = got[stem]
            assert sample["png"] == image_path.read_bytes()  # the PNG is stored as it is on disk
            assert "jpg" not in sample
            np.testing.assert_array_equal(image, np.asarray(Image.open(image_path).convert("RGB")))
            expected = _official(labels)
            np.testing.assert_array_equal(mask, expected)
            assert meta == {"id": stem, "source": meta["source"], "split": split, "height": H, "width": W}
            assert str(image_path) in meta["source"] and f"{stem}_gtFine_labelIds.png" in meta["source"]
            pixels += np.bincount(expected[expected != IGNORE_INDEX], minlength=19)
            ignore += int((expected == IGNORE_INDEX).sum())
        assert manifest["splits"][split]["class_pixels"] == pixels.tolist()
        assert manifest["splits"][split]["ignore_pixels"] == ignore
    # the remap itself: road 7 -> 0, car 26 -> 13, bicycle 33 -> 18, void 0/1/4 -> 255
    _, _, mask, _ = read_split(out, "train", 19)["aachen_000000_000019"]
    labels = made["train"]["aachen_000000_000019"][1]
    assert (mask[labels == 7] == 0).all() and (labels == 7).any()
    assert (mask[labels == 26] == 13).all() and (labels == 26).any()
    assert (mask[labels == 33] == 18).all() and (labels == 33).any()
    for void in (0, 1, 4):
        assert (labels == void).any() and (mask[labels == void] == 255).all()

    fp = manifest["source"]["fingerprint"]
    assert fp["files"] == 10  # 5 images + 5 labelIds; colour/instance/polygon files are not part of it
    sizes = [p.stat().st_size for s in made.values() for p, _ in s.values()]
    sizes += [p.stat().st_size for p in root.glob("gtFine/*/*/*_gtFine_labelIds.png")]
    assert fp["bytes"] == sum(sizes)
    assert len(fp["listing_sha256"]) == 64 and int(fp["listing_sha256"], 16) >= 0
    assert manifest["source"]["options"] == {"root": str(root), "splits": ["train", "val"]}


def test_cityscapes_full_label_table(tmp_path):
    """Every labelId 0..33 plus a few unused values maps as cityscapesScripts says."""
    root = tmp_path / "cs"
    _make_cityscapes(root, {"train": [("aachen", "aachen_000000_000019")], "val": [("lindau", "lindau_000000_000019")]},
                     extras=False)
    labels = np.arange(H * W, dtype=np.int64).reshape(H, W) % 40  # 0..39: 34..39 are not Cityscapes labels
    labels = labels.astype(np.uint8)
    save(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", labels)
    source = CityscapesSource(str(root))
    raw = source.load(source.splits()["train"][0])
    expected = np.full((H, W), 255, np.uint8)
    for label_id, train_id in OFFICIAL_TRAIN_ID.items():
        expected[labels == label_id] = train_id
    np.testing.assert_array_equal(raw.mask, expected)
    assert sorted(set(np.unique(raw.mask).tolist())) == list(range(19)) + [255]


def test_cityscapes_conf_matches_module():
    cfg = load_data_yaml("cityscapes")
    assert len(cfg.classes) == 19
    assert list(cfg.classes) == list(cityscapes.CLASSES)
    assert [list(c) for c in cfg.palette] == cityscapes.PALETTE
    assert cityscapes.CLASSES[0] == "road" and cityscapes.CLASSES[13] == "car" and cityscapes.CLASSES[18] == "bicycle"
    assert cfg.source._target_ == "segframe.data.sources.cityscapes.CityscapesSource"


def test_cityscapes_empty_split_writes_nothing(tmp_path):
    root = tmp_path / "cs"
    _make_cityscapes(root, {"train": CS_FRAMES["train"]})
    (root / "leftImg8bit" / "val").mkdir()
    (root / "gtFine" / "val").mkdir()
    out = tmp_path / "data" / "cityscapes"
    with pytest.raises(SampleError, match=r"split 'val' of cityscapes has no samples"):
        write_dataset(CityscapesSource(str(root)), out, "cityscapes", list(cityscapes.CLASSES), cityscapes.PALETTE)
    nothing_written(out)


def test_cityscapes_missing_mask_is_bad_sample(tmp_path):
    root = tmp_path / "cs"
    _make_cityscapes(root, extras=False)
    missing = root / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png"
    missing.unlink()
    out = tmp_path / "data" / "cs"
    with pytest.raises(SampleError) as err:
        write_dataset(CityscapesSource(str(root)), out, "cityscapes", list(cityscapes.CLASSES), cityscapes.PALETTE)
    assert f"mask file {missing} is missing" in str(err.value)
    assert "on_bad=skip" in str(err.value)
    nothing_written(out)

    manifest = write_dataset(CityscapesSource(str(root)), out, "cityscapes", list(cityscapes.CLASSES),
                             cityscapes.PALETTE, on_bad="skip")
    assert manifest["splits"]["train"]["num_samples"] == 2
    assert manifest["skipped"] == [{
        "split": "train",
        "item": ["bochum_000000_000313", str(root / "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"),
                 str(missing)],
        "problem": f"mask file {missing} is missing",
    }]
    assert sorted(read_split(out, "train", 19)) == ["aachen_000000_000019", "aachen_000001_000019"]


def test_cityscapes_size_mismatch_names_both_files(tmp_path):
    root = tmp_path / "cs"
    _make_cityscapes(root, extras=False)
    mask = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    save(mask, np.full((20, 30), 7, np.uint8))
    image = root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    out = tmp_path / "data" / "cs"
    with pytest.raises(SampleError) as err:
        write_dataset(CityscapesSource(str(root)), out, "cityscapes", list(cityscapes.CLASSES), cityscapes.PALETTE)
    msg = str(err.value)
    assert str(image) in msg and str(mask) in msg
    assert "image is 32x24 (WxH) but its mask is 30x20" in msg
    nothing_written(out)


def test_incomplete_root_names_only_what_is_missing(tmp_path):
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit" / "train").mkdir(parents=True)
    (root / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        CityscapesSource(str(root)).splits()
    assert "missing gtFine/train, gtFine/val." in str(err.value)
    assert "leftImg8bit/train," not in str(err.value)
