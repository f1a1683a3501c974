"""Cityscapes, ADE20K, Kvasir-SEG and folder converters on tiny fixtures in each dataset's real layout."""

from __future__ import annotations

import gc
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from segframe.data.sample import IGNORE_INDEX, SampleError, decode_mask, decode_sample
from segframe.data.shards import iter_shard, read_manifest, shard_urls, write_dataset
from segframe.data.sources import ade20k, cityscapes, kvasir
from segframe.data.sources.ade20k import ADE20KSource
from segframe.data.sources.cityscapes import CityscapesSource
from segframe.data.sources.files import DatasetNotFoundError, bit_palette
from segframe.data.sources.folder import FolderSource
from segframe.data.sources.kvasir import KvasirSegSource
from segframe.paths import CONF_DIR

H, W = 24, 32


# --------------------------------------------------------------------------- helpers


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path: Path, array: np.ndarray, fmt: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def _read_split(shard_dir: Path, split: str, num_classes: int) -> dict[str, tuple[dict, np.ndarray, np.ndarray, dict]]:
    """key -> (raw sample entries, image, mask, meta), for every sample of one split."""
    manifest = read_manifest(shard_dir)
    out = {}
    for url, n in shard_urls(manifest, split, shard_dir):
        for sample in iter_shard(url, n):
            image, mask, meta = decode_sample(sample, num_classes)
            out[sample["__key__"]] = (sample, image, mask, meta)
    return out


def _nothing_written(shard_dir: Path) -> None:
    assert not shard_dir.exists()
    if shard_dir.parent.exists():
        leftovers = [p.name for p in shard_dir.parent.iterdir() if p.name.startswith(f".{shard_dir.name}.")]
        assert leftovers in ([], [f".{shard_dir.name}.lock"])  # the (released) conversion lock may stay


def _load_yaml(name: str):
    return OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")


# --------------------------------------------------------------------------- Cityscapes

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
            image = _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _rgb(seed))
            labels = _cs_labels(seed)
            gt = root / "gtFine" / split / city
            _save(gt / f"{stem}_gtFine_labelIds.png", labels)
            if extras:  # what real gtFine holds next to labelIds: must all be ignored
                _save(gt / f"{stem}_gtFine_color.png", _rgb(100 + seed))
                _save(gt / f"{stem}_gtFine_instanceIds.png", (labels.astype(np.uint16) * 1000 + 1))  # 16-bit, as real
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
        got = _read_split(out, split, 19)
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
    _, _, mask, _ = _read_split(out, "train", 19)["aachen_000000_000019"]
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
    _save(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", labels)
    source = CityscapesSource(str(root))
    raw = source.load(source.splits()["train"][0])
    expected = np.full((H, W), 255, np.uint8)
    for label_id, train_id in OFFICIAL_TRAIN_ID.items():
        expected[labels == label_id] = train_id
    np.testing.assert_array_equal(raw.mask, expected)
    assert sorted(set(np.unique(raw.mask).tolist())) == list(range(19)) + [255]


def test_cityscapes_conf_matches_module():
    cfg = _load_yaml("cityscapes")
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
    _nothing_written(out)


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
    _nothing_written(out)

    manifest = write_dataset(CityscapesSource(str(root)), out, "cityscapes", list(cityscapes.CLASSES),
                             cityscapes.PALETTE, on_bad="skip")
    assert manifest["splits"]["train"]["num_samples"] == 2
    assert manifest["skipped"] == [{
        "split": "train",
        "item": ["bochum_000000_000313", str(root / "leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png"),
                 str(missing)],
        "problem": f"mask file {missing} is missing",
    }]
    assert sorted(_read_split(out, "train", 19)) == ["aachen_000000_000019", "aachen_000001_000019"]


def test_cityscapes_size_mismatch_names_both_files(tmp_path):
    root = tmp_path / "cs"
    _make_cityscapes(root, extras=False)
    mask = root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    _save(mask, np.full((20, 30), 7, np.uint8))
    image = root / "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    out = tmp_path / "data" / "cs"
    with pytest.raises(SampleError) as err:
        write_dataset(CityscapesSource(str(root)), out, "cityscapes", list(cityscapes.CLASSES), cityscapes.PALETTE)
    msg = str(err.value)
    assert str(image) in msg and str(mask) in msg
    assert "image is 32x24 (WxH) but its mask is 30x20" in msg
    _nothing_written(out)


# --------------------------------------------------------------------------- ADE20K


def _make_ade(root: Path, n_train: int = 3, n_val: int = 2) -> dict[str, dict[str, tuple[Path, np.ndarray]]]:
    made: dict[str, dict[str, tuple[Path, np.ndarray]]] = {"train": {}, "val": {}}
    seed = 0
    for split, folder, prefix, n in (("train", "training", "ADE_train", n_train),
                                     ("val", "validation", "ADE_val", n_val)):
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            seed += 1
            stem = f"{prefix}_{i:08d}"
            image = _save(root / "images" / folder / f"{stem}.jpg", _rgb(seed), "JPEG", quality=90)
            labels = np.random.default_rng(seed).choice(np.array([0, 1, 2, 13, 150], np.uint8), (H, W))
            labels[0, 0], labels[0, 1], labels[0, 2] = 0, 1, 150
            _save(root / "annotations" / folder / f"{stem}.png", labels)
            made[split][stem] = (image, labels)
    return made


def test_ade20k_layout_shift_and_bytes(tmp_path):
    root = tmp_path / "raw" / "ADEChallengeData2016"
    made = _make_ade(root)
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n")  # shipped alongside, ignored
    (root / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    out = tmp_path / "data" / "ade20k"
    manifest = write_dataset(ADE20KSource(str(root)), out, "ade20k", list(ade20k.CLASSES), bit_palette(150))
    assert sorted(manifest["splits"]) == ["train", "val"]
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    for split in ("train", "val"):
        got = _read_split(out, split, 150)
        assert sorted(got) == sorted(made[split])
        pixels = np.zeros(150, np.int64)
        for stem, (image_path, labels) in made[split].items():
            sample, _, mask, meta = got[stem]
            assert sample["jpg"] == image_path.read_bytes()  # the JPEG is never re-encoded
            assert "png" not in sample
            expected = np.where(labels == 0, 255, labels.astype(np.int32) - 1).astype(np.uint8)
            np.testing.assert_array_equal(mask, expected)
            assert mask[0, 0] == 255 and mask[0, 1] == 0 and mask[0, 2] == 149  # 0 -> void, wall -> 0, flag -> 149
            assert meta["split"] == split and meta["id"] == stem
            pixels += np.bincount(expected[expected != 255], minlength=150)
        assert manifest["splits"][split]["class_pixels"] == pixels.tolist()
    assert manifest["source"]["options"] == {"root": str(root), "splits": {"train": "training", "val": "validation"}}
    assert manifest["source"]["fingerprint"]["files"] == 10


def test_ade20k_conf_matches_module():
    cfg = _load_yaml("ade20k")
    assert len(cfg.classes) == 150
    assert list(cfg.classes) == list(ade20k.CLASSES)
    assert ade20k.CLASSES[0] == "wall" and ade20k.CLASSES[149] == "flag"
    assert cfg.palette is None
    assert dict(cfg.source.splits) == {"train": "training", "val": "validation"}


def test_ade20k_label_above_150_names_file(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    _make_ade(root)
    bad = root / "annotations/validation/ADE_val_00000002.png"
    labels = np.ones((H, W), np.uint8)
    labels[3, 4], labels[5, 6] = 151, 200
    _save(bad, labels)
    out = tmp_path / "data" / "ade20k"
    with pytest.raises(SampleError) as err:
        write_dataset(ADE20KSource(str(root)), out, "ade20k", list(ade20k.CLASSES), bit_palette(150))
    assert f"mask {bad}: ADE20K labels are 0..150, found [151, 200]" in str(err.value)
    _nothing_written(out)


def test_ade20k_corrupt_jpeg_is_bad_sample(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    made = _make_ade(root)
    garbage = root / "images/training/ADE_train_00000002.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    truncated = made["val"]["ADE_val_00000001"][0]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])  # still starts with the JPEG magic bytes
    out = tmp_path / "data" / "ade20k"
    with pytest.raises(SampleError, match=r"ADE_train_00000002\.jpg.*cannot decode image"):
        write_dataset(ADE20KSource(str(root)), out, "ade20k", list(ade20k.CLASSES), bit_palette(150))
    _nothing_written(out)
    manifest = write_dataset(ADE20KSource(str(root)), out, "ade20k", list(ade20k.CLASSES), bit_palette(150),
                             on_bad="skip")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 2, "val": 1}
    problems = {(e["split"], e["item"][0]): e["problem"] for e in manifest["skipped"]}
    assert set(problems) == {("train", "ADE_train_00000002"), ("val", "ADE_val_00000001")}
    assert str(garbage) in problems[("train", "ADE_train_00000002")]
    assert str(truncated) in problems[("val", "ADE_val_00000001")]
    assert all("cannot decode image" in p for p in problems.values())


# --------------------------------------------------------------------------- Kvasir-SEG

KV_IDS = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0s690hkp960855tjuaqvv0",
          "cju0sr5ghl0nd08789uzf1raf", "cju0sxqiclckk08551ycbwhno", "cju0t4oil7vzk099370nun5h9"]


def _polyp(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cy, cx = rng.integers(8, 16), rng.integers(10, 22)
    ry, rx = rng.integers(4, 8), rng.integers(5, 10)
    yy, xx = np.mgrid[:H, :W]
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.uint8) * 255


def _make_kvasir(root: Path, ids=KV_IDS) -> dict[str, tuple[Path, Path, np.ndarray]]:
    """Kvasir-SEG/images/<id>.jpg + masks/<id>.jpg: JPEG-compressed 0/255 masks, some saved as RGB
    like the real ones."""
    made = {}
    for i, sample_id in enumerate(ids):
        image = _save(root / "images" / f"{sample_id}.jpg", _rgb(i), "JPEG", quality=85)
        clean = _polyp(i)
        mask_array = np.repeat(clean[..., None], 3, axis=2) if i % 2 else clean
        mask = _save(root / "masks" / f"{sample_id}.jpg", mask_array, "JPEG", quality=75)
        made[sample_id] = (image, mask, clean)
    return made


def _thresholded(jpeg: Path) -> np.ndarray:
    return (np.asarray(Image.open(jpeg).convert("L")) >= 128).astype(np.uint8)


def test_kvasir_jpeg_masks_thresholded(tmp_path):
    root = tmp_path / "raw" / "Kvasir-SEG"
    made = _make_kvasir(root)
    (root / "kavsir_bboxes.json").write_text("{}")  # shipped with the dataset, ignored
    out = tmp_path / "data" / "kvasir_seg"
    manifest = write_dataset(KvasirSegSource(str(root), num_val=2, seed=0), out, "kvasir_seg",
                             list(kvasir.CLASSES), kvasir.PALETTE)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 4, "val": 2}
    got = {**_read_split(out, "train", 2), **_read_split(out, "val", 2)}
    assert sorted(got) == sorted(KV_IDS)
    noisy = 0
    pixels = np.zeros(2, np.int64)
    for sample_id, (image_path, mask_path, clean) in made.items():
        sample, _, mask, _ = got[sample_id]
        assert sample["jpg"] == image_path.read_bytes()
        grey = np.asarray(Image.open(mask_path).convert("L"))
        noisy += int(((grey != 0) & (grey != 255)).sum())
        assert set(np.unique(mask).tolist()) == {0, 1}
        np.testing.assert_array_equal(mask, _thresholded(mask_path))
        assert (mask == (clean > 0)).mean() > 0.97  # the JPEG noise flips at most a few edge pixels
        pixels += np.bincount(mask.ravel(), minlength=2)
    assert noisy > 0  # the fixture does carry compression noise
    total = manifest["splits"]["train"]["class_pixels"]
    total = np.add(total, manifest["splits"]["val"]["class_pixels"])
    assert total.tolist() == pixels.tolist()
    assert manifest["source"]["options"] == {"root": str(root), "num_val": 2, "seed": 0, "split_dir": None}


def test_kvasir_threshold_is_128(tmp_path):
    """A grey ramp JPEG mask: 127 is background, 128 is polyp."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    path = _save(tmp_path / "ramp.jpg", ramp, "JPEG", quality=100)
    grey = np.asarray(Image.open(path).convert("L"))
    assert (grey == 127).any() and (grey == 128).any()
    mask = kvasir.read_jpeg_mask(path)
    np.testing.assert_array_equal(mask, (grey >= 128).astype(np.uint8))
    assert mask.dtype == np.uint8 and mask.shape == (8, 256)


def _val_ids(source: KvasirSegSource) -> list[str]:
    return sorted(it[0] for it in source.splits()["val"])


def test_kvasir_seeded_split(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    _make_kvasir(root)
    a, b = KvasirSegSource(str(root), num_val=2, seed=0), KvasirSegSource(str(root), num_val=2, seed=0)
    assert _val_ids(a) == _val_ids(b)
    splits = a.splits()
    assert len(splits["val"]) == 2 and len(splits["train"]) == 4
    assert sorted(it[0] for it in splits["train"] + splits["val"]) == sorted(KV_IDS)
    by_seed = {seed: tuple(_val_ids(KvasirSegSource(str(root), num_val=2, seed=seed))) for seed in range(6)}
    assert len(set(by_seed.values())) > 1  # another seed gives another split
    assert by_seed[0] != by_seed[1]
    five = KvasirSegSource(str(root), num_val=5, seed=3).splits()
    assert (len(five["train"]), len(five["val"])) == (1, 5)
    with pytest.raises(ValueError, match="between 1 and 5"):
        KvasirSegSource(str(root), num_val=6).splits()
    # the split does not depend on the listing order of the file system
    src = KvasirSegSource(str(root), num_val=2, seed=0)
    src_items = src.splits()
    assert [it[0] for it in src_items["train"]] == sorted(it[0] for it in src_items["train"])


def test_kvasir_split_dir(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    _make_kvasir(root)
    lists = tmp_path / "kvasir_lists"
    lists.mkdir()
    (lists / "train.txt").write_text("\n".join(KV_IDS[:3]) + "\n\n")
    (lists / "val.txt").write_text(f"  {KV_IDS[5]}  \n{KV_IDS[3]}\n")
    source = KvasirSegSource(str(root), num_val=99, seed=0, split_dir=str(lists))
    splits = source.splits()
    assert [it[0] for it in splits["train"]] == KV_IDS[:3]
    assert [it[0] for it in splits["val"]] == [KV_IDS[5], KV_IDS[3]]
    out = tmp_path / "data" / "kv"
    manifest = write_dataset(source, out, "kvasir_seg", list(kvasir.CLASSES), kvasir.PALETTE)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    assert sorted(_read_split(out, "val", 2)) == sorted([KV_IDS[5], KV_IDS[3]])
    lists_fp = manifest["source"]["fingerprint"]["lists"]
    assert set(lists_fp) == {str(lists / "train.txt"), str(lists / "val.txt")}
    assert lists_fp[str(lists / "val.txt")]["bytes"] == len((lists / "val.txt").read_bytes())

    (lists / "val.txt").write_text(f"{KV_IDS[4]}\nno_such_polyp\n")
    with pytest.raises(SampleError, match=r"split 'val' lists 1 id\(s\) with no image.*no_such_polyp"):
        KvasirSegSource(str(root), split_dir=str(lists)).splits()


def test_kvasir_conf_matches_module():
    cfg = _load_yaml("kvasir_seg")
    assert list(cfg.classes) == list(kvasir.CLASSES) == ["background", "polyp"]
    assert [list(c) for c in cfg.palette] == kvasir.PALETTE
    assert cfg.num_val == 120 and cfg.seed == 0 and cfg.split_dir is None


# --------------------------------------------------------------------------- folder


def _make_folder(root: Path, n: int = 10, classes: int = 3, ext_cycle=("jpg", "png")) -> dict[str, np.ndarray]:
    made = {}
    for i in range(n):
        stem = f"img_{i:02d}"
        ext = ext_cycle[i % len(ext_cycle)]
        _save(root / "images" / f"{stem}.{ext}", _rgb(i), "JPEG" if ext == "jpg" else "PNG")
        labels = np.random.default_rng(50 + i).integers(0, classes, (H, W)).astype(np.uint8)
        _save(root / "masks" / f"{stem}.png", labels)
        made[stem] = labels
    return made


def test_folder_index_masks_and_seeded_split(tmp_path):
    root = tmp_path / "mydata"
    made = _make_folder(root)
    out = tmp_path / "data" / "cells"
    source = FolderSource(str(root), val_fraction=0.3, seed=0)
    manifest = write_dataset(source, out, "cells", ["bg", "a", "b"], bit_palette(3), num_workers=2, shard_size=3)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 7, "val": 3}
    got = {**_read_split(out, "train", 3), **_read_split(out, "val", 3)}
    assert sorted(got) == sorted(made)
    for stem, labels in made.items():
        sample, _, mask, _ = got[stem]
        assert ("jpg" in sample) == (int(stem[-2:]) % 2 == 0)
        np.testing.assert_array_equal(mask, labels)
        assert sample["seg.png"] == (root / "masks" / f"{stem}.png").read_bytes()  # index PNGs kept as they are
    again = FolderSource(str(root), val_fraction=0.3, seed=0).splits()
    assert again == source.splits()
    vals = {tuple(sorted(it[0] for it in FolderSource(str(root), val_fraction=0.3, seed=s).splits()["val"]))
            for s in range(5)}
    assert len(vals) > 1
    assert len(FolderSource(str(root), val_fraction=0.0).splits()["val"]) == 1  # at least one val image
    assert manifest["source"]["fingerprint"]["unpaired_masks"] == []


def test_folder_palette_png_read_as_indices(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=4)
    labels = np.random.default_rng(7).integers(0, 4, (H, W)).astype(np.uint8)
    im = Image.fromarray(labels, mode="P")
    # colours far from the indices: an RGB or greyscale read would give 200, 150, ... not 0..3
    im.putpalette([200, 10, 10, 10, 150, 10, 10, 10, 250, 90, 90, 90] + [0] * (256 * 3 - 12))
    im.save(root / "masks" / "img_01.png")
    assert Image.open(root / "masks" / "img_01.png").mode == "P"
    source = FolderSource(str(root), split_lists=None, val_fraction=0.25)
    raw = source.load(next(it for s in source.splits().values() for it in s if it[0] == "img_01"))
    # a source hands over indices, or an L/P PNG's bytes whose values are the indices
    raw_mask = decode_mask(raw.mask) if isinstance(raw.mask, bytes) else raw.mask
    np.testing.assert_array_equal(raw_mask, labels)
    out = tmp_path / "data" / "p"
    manifest = write_dataset(source, out, "p", ["a", "b", "c", "d"], bit_palette(4))
    split = next(s for s, items in source.splits().items() if any(it[0] == "img_01" for it in items))
    sample, _, mask, _ = _read_split(out, split, 4)["img_01"]
    np.testing.assert_array_equal(mask, labels)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(sample["seg.png"]))), labels)
    assert sample["seg.png"] == (root / "masks" / "img_01.png").read_bytes()
    assert manifest["splits"][split]["class_pixels"] != [0, 0, 0, 0]
    assert manifest["splits"]["train"]["num_samples"] + manifest["splits"]["val"]["num_samples"] == 4


def test_folder_rgb_masks_with_palette_and_void(tmp_path):
    root = tmp_path / "mydata"
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    void = [[255, 255, 255]]
    expected = {}
    for i in range(4):
        stem = f"cell_{i}"
        _save(root / "images" / f"{stem}.png", _rgb(i))
        labels = np.random.default_rng(i).integers(0, 3, (H, W)).astype(np.uint8)
        labels[:2] = 255
        colours = np.array(palette + [[0, 0, 0]] * 252 + void, np.uint8)[labels]
        _save(root / "masks" / f"{stem}.png", colours)
        expected[stem] = labels
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("cell_0\ncell_2\ncell_3\n")
    (root / "lists" / "val.txt").write_text("cell_1\n")
    source = FolderSource(str(root), mask_format="rgb", palette=palette, void_colours=void,
                          split_lists={"train": "lists/train.txt", "val": "lists/val.txt"})
    out = tmp_path / "data" / "rgb"
    manifest = write_dataset(source, out, "rgb", ["bg", "red", "green"], palette)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 1}
    got = {**_read_split(out, "train", 3), **_read_split(out, "val", 3)}
    assert sorted(_read_split(out, "val", 3)) == ["cell_1"]
    for stem, labels in expected.items():
        np.testing.assert_array_equal(got[stem][2], labels)
        assert (got[stem][2][:2] == 255).all()
    counts = np.zeros(3, np.int64)
    for stem in ("cell_0", "cell_2", "cell_3"):
        counts += np.bincount(expected[stem][expected[stem] != 255], minlength=3)
    assert manifest["splits"]["train"]["class_pixels"] == counts.tolist()
    assert manifest["splits"]["train"]["ignore_pixels"] == 3 * 2 * W
    assert set(manifest["source"]["fingerprint"]["lists"]) == {"lists/train.txt", "lists/val.txt"}

    # an unknown colour names the colours and the file
    bad = np.array(palette, np.uint8)[expected["cell_2"] % 3]
    bad[5, 5] = [12, 34, 56]
    bad[6, 6] = [1, 2, 3]
    bad_path = _save(root / "masks" / "cell_2.png", bad)
    with pytest.raises(SampleError) as err:
        write_dataset(FolderSource(str(root), mask_format="rgb", palette=palette, void_colours=void,
                                   split_lists={"train": "lists/train.txt", "val": "lists/val.txt"}),
                      tmp_path / "data" / "rgb2", "rgb2", ["bg", "red", "green"], palette)
    msg = str(err.value)
    assert str(bad_path) in msg
    assert "colours [[1, 2, 3], [12, 34, 56]] are not in data.palette" in msg
    _nothing_written(tmp_path / "data" / "rgb2")


def test_folder_rgb_mask_without_palette_and_format_mismatch(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=3)
    coloured = np.zeros((H, W, 3), np.uint8)
    coloured[2:6, 3:9] = [255, 0, 0]
    _save(root / "masks" / "img_00.png", coloured)
    src = FolderSource(str(root), val_fraction=0.34)
    item = next(it for s in src.splits().values() for it in s if it[0] == "img_00")
    with pytest.raises(SampleError, match="data.palette is not set"):
        src.load(item)
    with pytest.raises(SampleError, match=r"has mode 'RGB'; data.mask_format=index expects 1, L or P \(or grey RGB\)"):
        FolderSource(str(root), mask_format="index", val_fraction=0.34).load(item)
    # class ids saved as grey in an RGB file are read as ids
    grey = np.repeat(np.array([[0, 1], [2, 1]], np.uint8).repeat(H // 2, 0).repeat(W // 2, 1)[..., None], 3, axis=2)
    _save(root / "masks" / "img_00.png", grey)
    assert np.array_equal(src.load(item).mask, grey[..., 0])
    l_item = next(it for s in src.splits().values() for it in s if it[0] == "img_01")
    with pytest.raises(SampleError, match=r"has mode 'L'; data.mask_format=rgb expects RGB, RGBA or P"):
        FolderSource(str(root), mask_format="rgb", palette=[[0, 0, 0]], val_fraction=0.34).load(l_item)
    with pytest.raises(ValueError, match="mask_format"):
        FolderSource(str(root), mask_format="colour")


def test_folder_palette_png_by_colour_with_rgb_format(tmp_path):
    """An editor's indexed-colour PNG: with mask_format=rgb its colours, not its index order, decide."""
    root = tmp_path / "mydata"
    _make_folder(root, n=3)
    ids = np.zeros((H, W), np.uint8)
    ids[:, W // 2:] = 1  # palette entry 1 is blue, which is class 2 in the config's palette
    mask = Image.fromarray(ids, mode="P")
    mask.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    mask.save(root / "masks" / "img_00.png")
    src = FolderSource(str(root), mask_format="rgb", palette=[[0, 0, 0], [255, 0, 0], [0, 0, 255]],
                       val_fraction=0.34)
    item = next(it for s in src.splits().values() for it in s if it[0] == "img_00")
    assert np.array_equal(src.load(item).mask, ids * 2)


def test_folder_label_map_and_binary_mask_warning(tmp_path, caplog):
    """0/255 binary masks: without a label map the foreground would silently be ignored; say so."""
    root = tmp_path / "mydata"
    _make_folder(root, n=3)
    for i in range(3):
        binary = np.zeros((H, W), np.uint8)
        binary[4:12, 5:15] = 255
        _save(root / "masks" / f"img_{i:02d}.png", binary)
    with caplog.at_level(logging.WARNING, logger="segframe"):
        manifest = write_dataset(FolderSource(str(root), val_fraction=0.34), tmp_path / "a", "a", ["bg", "cell"],
                                 bit_palette(2))
    assert manifest["warnings"] and "['cell'] have no labelled pixels" in manifest["warnings"][0]
    assert "data.label_map={255: 1}" in caplog.text
    mapped = write_dataset(FolderSource(str(root), val_fraction=0.34, label_map={255: 1}), tmp_path / "b", "b",
                           ["bg", "cell"], bit_palette(2))
    assert mapped["warnings"] == [] and mapped["splits"]["train"]["class_pixels"][1] == 2 * 8 * 10
    assert mapped["splits"]["train"]["ignore_pixels"] == 0


def test_folder_jpeg_mask_and_dotfiles(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=3)
    (root / "masks" / "img_02.png").unlink()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(root / "masks" / "img_02.jpg")
    (root / "images" / "._img_00.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS resource fork
    (root / "images" / ".DS_Store").write_bytes(b"\x00")
    src = FolderSource(str(root), val_fraction=0.34)
    assert sorted(it[0] for s in src.splits().values() for it in s) == ["img_00", "img_01", "img_02"]
    item = next(it for s in src.splits().values() for it in s if it[0] == "img_02")
    with pytest.raises(SampleError, match=r"img_02\.jpg is a JPEG; masks must be lossless"):
        src.load(item)


def test_folder_image_without_mask_and_mask_without_image(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=6)
    lonely = _save(root / "images" / "no_mask.jpg", _rgb(9), "JPEG")
    orphan = _save(root / "masks" / "no_image.png", np.zeros((H, W), np.uint8))
    (root / "masks" / "notes.txt").write_text("not a mask")
    (root / "train.txt").write_text("img_00\nimg_01\nno_mask\nimg_02\n")
    (root / "val.txt").write_text("img_03\nimg_04\n")
    lists = {"train": "train.txt", "val": "val.txt"}
    out = tmp_path / "data" / "f"
    with pytest.raises(SampleError) as err:
        write_dataset(FolderSource(str(root), split_lists=lists), out, "f", ["a", "b", "c"], bit_palette(3))
    assert f"image {lonely} has no mask file" in str(err.value)
    _nothing_written(out)

    manifest = write_dataset(FolderSource(str(root), split_lists=lists), out, "f", ["a", "b", "c"], bit_palette(3),
                             on_bad="skip")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    assert manifest["skipped"] == [{"split": "train", "item": ["no_mask", str(lonely), None],
                                    "problem": f"image {lonely} has no mask file"}]
    assert sorted(_read_split(out, "train", 3)) == ["img_00", "img_01", "img_02"]
    fp = manifest["source"]["fingerprint"]
    assert fp["unpaired_masks"] == [str(orphan)]
    assert fp["files"] == 5 * 2 + 1  # the maskless image counts once
    assert set(fp["lists"]) == {"train.txt", "val.txt"}
    assert read_manifest(out)["skipped"] == manifest["skipped"]


def test_folder_out_of_range_label_and_size_mismatch(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=4, classes=2)
    labels = np.zeros((H, W), np.uint8)
    labels[1, 1], labels[2, 2] = 3, 7
    bad = _save(root / "masks" / "img_02.png", labels)
    out = tmp_path / "data" / "f"
    src = lambda: FolderSource(str(root), val_fraction=0.5, seed=1)
    with pytest.raises(SampleError) as err:
        write_dataset(src(), out, "f", ["a", "b", "c"], bit_palette(3))
    assert str(bad) in str(err.value)
    assert "label values [3, 7] are outside 0..2 and not 255" in str(err.value)
    _nothing_written(out)

    small = _save(root / "masks" / "img_02.png", np.zeros((10, 12), np.uint8))
    image = root / "images" / "img_02.jpg"
    with pytest.raises(SampleError) as err:
        write_dataset(src(), out, "f", ["a", "b", "c"], bit_palette(3))
    msg = str(err.value)
    assert str(image) in msg and str(small) in msg and "image is 32x24 (WxH) but its mask is 12x10" in msg
    _nothing_written(out)


def test_folder_corrupt_image(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=4)
    broken = root / "images" / "img_00.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    src = FolderSource(str(root), val_fraction=0.25)
    item = next(it for s in src.splits().values() for it in s if it[0] == "img_00")
    manifest = write_dataset(src, tmp_path / "data" / "f", "f", ["a", "b", "c"], bit_palette(3), on_bad="skip")
    assert [e["item"][0] for e in manifest["skipped"]] == ["img_00"]
    problem = manifest["skipped"][0]["problem"]
    assert str(broken) in problem and "cannot decode image" in problem
    assert item[1] == str(broken)
    total = sum(v["num_samples"] for v in manifest["splits"].values())
    assert total == 3


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="lists open files through /proc (Linux)")
def test_aborted_conversion_closes_its_shard_file(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=4)
    _save(root / "masks" / "img_03.png", np.full((H, W), 9, np.uint8))  # the last train sample is bad
    source = FolderSource(str(root), split_lists={"train": "train.txt", "val": "val.txt"})
    (root / "train.txt").write_text("img_00\nimg_01\nimg_03\n")
    (root / "val.txt").write_text("img_02\n")
    out = tmp_path / "data" / "f"
    leaked = None
    try:
        write_dataset(source, out, "f", ["a", "b", "c"], bit_palette(3))
    except SampleError:
        open_files = []
        for fd in Path("/proc/self/fd").iterdir():
            try:
                open_files.append(str(fd.readlink()))
            except OSError:
                pass
        leaked = [f for f in open_files if f".{out.name}.partial-" in f]
    # the exception (and the frames holding the writer) is gone here, so whatever it left open is
    # finalised now rather than while pytest formats the failure
    gc.collect()
    assert leaked == []


# --------------------------------------------------------------------------- missing raw data


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
    _nothing_written(out)
    assert not (tmp_path / "data").exists()


def test_incomplete_root_names_only_what_is_missing(tmp_path):
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit" / "train").mkdir(parents=True)
    (root / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as err:
        CityscapesSource(str(root)).splits()
    assert "missing gtFine/train, gtFine/val." in str(err.value)
    assert "leftImg8bit/train," not in str(err.value)


@pytest.mark.parametrize("name, cls", [("cityscapes", CityscapesSource), ("ade20k", ADE20KSource),
                                        ("kvasir_seg", KvasirSegSource), ("folder", FolderSource)])
def test_conf_source_nodes_instantiate(tmp_path, name, cls):
    overrides = [f"data={name}", f"data.root={tmp_path}", f"paths.data_dir={tmp_path / 'd'}"]
    if name == "folder":
        overrides.append("data.classes=[bg,fg]")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="convert", overrides=overrides)
    source = instantiate(cfg.data.source)
    assert type(source) is cls
    assert source.root == tmp_path
    assert cfg.data.shard_dir == str(tmp_path / "d" / name)


# --------------------------------------------------------------------------- CLI


def test_cli_convert_and_browse_kvasir(tmp_path):
    root = tmp_path / "raw" / "Kvasir-SEG"
    _make_kvasir(root)
    data_dir = tmp_path / "data"
    common = ["data=kvasir_seg", f"paths.data_dir={data_dir}"]
    res = run_cli("convert", *common, f"data.root={root}", "data.num_val=2", f"hydra.run.dir={tmp_path / 'run1'}")
    assert res.returncode == 0, res.stderr
    manifest = read_manifest(data_dir / "kvasir_seg")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 4, "val": 2}
    assert manifest["name"] == "kvasir_seg" and manifest["classes"] == ["background", "polyp"]
    assert manifest["source"]["options"]["num_val"] == 2
    assert "converted kvasir_seg" in res.stdout

    grid = tmp_path / "grid.png"
    res = run_cli("convert", *common, "browse=true", f"browse_file={grid}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert res.returncode == 0, res.stderr
    chart = tmp_path / "grid-class-pixels.png"
    for png in (grid, chart):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(grid) as im:
        assert im.width == 2 * 256  # two val samples side by side


def test_cli_missing_root(tmp_path):
    data_dir = tmp_path / "data"
    res = run_cli("convert", "data=kvasir_seg", f"data.root={tmp_path / 'nope'}", f"paths.data_dir={data_dir}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode != 0
    assert "https://datasets.simula.no/kvasir-seg/" in res.stderr
    assert "python -m segframe.convert data=kvasir_seg data.root=" in res.stderr
    assert "Traceback" not in res.stderr
    assert not data_dir.exists()
