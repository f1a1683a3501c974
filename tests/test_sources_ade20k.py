"""The ADE20K (SceneParsing, ADEChallengeData2016) converter on tiny fixtures in the dataset's real layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segframe.data.sample import SampleError
from segframe.data.shards import write_dataset
from segframe.data.sources import ade20k
from segframe.data.sources.ade20k import ADE20KSource
from segframe.data.sources.files import bit_palette

from helpers.datasets import H, W, load_data_yaml, nothing_written, read_split, rgb, save


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
            image = save(root / "images" / folder / f"{stem}.jpg", rgb(seed), "JPEG", quality=90)
            labels = np.random.default_rng(seed).choice(np.array([0, 1, 2, 13, 150], np.uint8), (H, W))
            labels[0, 0], labels[0, 1], labels[0, 2] = 0, 1, 150
            save(root / "annotations" / folder / f"{stem}.png", labels)
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
        got = read_split(out, split, 150)
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
    cfg = load_data_yaml("ade20k")
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
    save(bad, labels)
    out = tmp_path / "data" / "ade20k"
    with pytest.raises(SampleError) as err:
        write_dataset(ADE20KSource(str(root)), out, "ade20k", list(ade20k.CLASSES), bit_palette(150))
    assert f"mask {bad}: ADE20K labels are 0..150, found [151, 200]" in str(err.value)
    nothing_written(out)


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
    nothing_written(out)
    manifest = write_dataset(ADE20KSource(str(root)), out, "ade20k", list(ade20k.CLASSES), bit_palette(150),
                             on_bad="skip")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 2, "val": 1}
    problems = {(e["split"], e["item"][0]): e["problem"] for e in manifest["skipped"]}
    assert set(problems) == {("train", "ADE_train_00000002"), ("val", "ADE_val_00000001")}
    assert str(garbage) in problems[("train", "ADE_train_00000002")]
    assert str(truncated) in problems[("val", "ADE_val_00000001")]
    assert all("cannot decode image" in p for p in problems.values())
