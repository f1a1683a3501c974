"""The folder converter (your own images/ + masks/) on tiny fixtures: index, palette and RGB masks, split lists,
bad and unpaired files."""

from __future__ import annotations

import gc
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segframe.data.sample import SampleError, decode_mask
from segframe.data.shards import read_manifest, write_dataset
from segframe.data.sources.files import bit_palette
from segframe.data.sources.folder import FolderSource

from helpers.datasets import H, W, nothing_written, read_split, rgb, save


def _make_folder(root: Path, n: int = 10, classes: int = 3, ext_cycle=("jpg", "png")) -> dict[str, np.ndarray]:
    made = {}
    for i in range(n):
        stem = f"img_{i:02d}"
        ext = ext_cycle[i % len(ext_cycle)]
        save(root / "images" / f"{stem}.{ext}", rgb(i), "JPEG" if ext == "jpg" else "PNG")
        labels = np.random.default_rng(50 + i).integers(0, classes, (H, W)).astype(np.uint8)
        save(root / "masks" / f"{stem}.png", labels)
        made[stem] = labels
    return made


def test_folder_index_masks_and_seeded_split(tmp_path):
    root = tmp_path / "mydata"
    made = _make_folder(root)
    out = tmp_path / "data" / "cells"
    source = FolderSource(str(root), val_fraction=0.3, seed=0)
    manifest = write_dataset(source, out, "cells", ["bg", "a", "b"], bit_palette(3), num_workers=2, shard_size=3)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 7, "val": 3}
    got = {**read_split(out, "train", 3), **read_split(out, "val", 3)}
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
    sample, _, mask, _ = read_split(out, split, 4)["img_01"]
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
        save(root / "images" / f"{stem}.png", rgb(i))
        labels = np.random.default_rng(i).integers(0, 3, (H, W)).astype(np.uint8)
        labels[:2] = 255
        colours = np.array(palette + [[0, 0, 0]] * 252 + void, np.uint8)[labels]
        save(root / "masks" / f"{stem}.png", colours)
        expected[stem] = labels
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("cell_0\ncell_2\ncell_3\n")
    (root / "lists" / "val.txt").write_text("cell_1\n")
    source = FolderSource(str(root), mask_format="rgb", palette=palette, void_colours=void,
                          split_lists={"train": "lists/train.txt", "val": "lists/val.txt"})
    out = tmp_path / "data" / "rgb"
    manifest = write_dataset(source, out, "rgb", ["bg", "red", "green"], palette)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 1}
    got = {**read_split(out, "train", 3), **read_split(out, "val", 3)}
    assert sorted(read_split(out, "val", 3)) == ["cell_1"]
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
    bad_path = save(root / "masks" / "cell_2.png", bad)
    with pytest.raises(SampleError) as err:
        write_dataset(FolderSource(str(root), mask_format="rgb", palette=palette, void_colours=void,
                                   split_lists={"train": "lists/train.txt", "val": "lists/val.txt"}),
                      tmp_path / "data" / "rgb2", "rgb2", ["bg", "red", "green"], palette)
    msg = str(err.value)
    assert str(bad_path) in msg
    assert "colours [[1, 2, 3], [12, 34, 56]] are not in data.palette" in msg
    nothing_written(tmp_path / "data" / "rgb2")


def test_folder_rgb_mask_without_palette_and_format_mismatch(tmp_path):
    root = tmp_path / "mydata"
    _make_folder(root, n=3)
    coloured = np.zeros((H, W, 3), np.uint8)
    coloured[2:6, 3:9] = [255, 0, 0]
    save(root / "masks" / "img_00.png", coloured)
    src = FolderSource(str(root), val_fraction=0.34)
    item = next(it for s in src.splits().values() for it in s if it[0] == "img_00")
    with pytest.raises(SampleError, match="data.palette is not set"):
        src.load(item)
    with pytest.raises(SampleError, match=r"has mode 'RGB'; data.mask_format=index expects 1, L or P \(or grey RGB\)"):
        FolderSource(str(root), mask_format="index", val_fraction=0.34).load(item)
    # class ids saved as grey in an RGB file are read as ids
    grey = np.repeat(np.array([[0, 1], [2, 1]], np.uint8).repeat(H // 2, 0).repeat(W // 2, 1)[..., None], 3, axis=2)
    save(root / "masks" / "img_00.png", grey)
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
        save(root / "masks" / f"img_{i:02d}.png", binary)
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
    lonely = save(root / "images" / "no_mask.jpg", rgb(9), "JPEG")
    orphan = save(root / "masks" / "no_image.png", np.zeros((H, W), np.uint8))
    (root / "masks" / "notes.txt").write_text("not a mask")
    (root / "train.txt").write_text("img_00\nimg_01\nno_mask\nimg_02\n")
    (root / "val.txt").write_text("img_03\nimg_04\n")
    lists = {"train": "train.txt", "val": "val.txt"}
    out = tmp_path / "data" / "f"
    with pytest.raises(SampleError) as err:
        write_dataset(FolderSource(str(root), split_lists=lists), out, "f", ["a", "b", "c"], bit_palette(3))
    assert f"image {lonely} has no mask file" in str(err.value)
    nothing_written(out)

    manifest = write_dataset(FolderSource(str(root), split_lists=lists), out, "f", ["a", "b", "c"], bit_palette(3),
                             on_bad="skip")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    assert manifest["skipped"] == [{"split": "train", "item": ["no_mask", str(lonely), None],
                                    "problem": f"image {lonely} has no mask file"}]
    assert sorted(read_split(out, "train", 3)) == ["img_00", "img_01", "img_02"]
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
    bad = save(root / "masks" / "img_02.png", labels)
    out = tmp_path / "data" / "f"
    src = lambda: FolderSource(str(root), val_fraction=0.5, seed=1)
    with pytest.raises(SampleError) as err:
        write_dataset(src(), out, "f", ["a", "b", "c"], bit_palette(3))
    assert str(bad) in str(err.value)
    assert "label values [3, 7] are outside 0..2 and not 255" in str(err.value)
    nothing_written(out)

    small = save(root / "masks" / "img_02.png", np.zeros((10, 12), np.uint8))
    image = root / "images" / "img_02.jpg"
    with pytest.raises(SampleError) as err:
        write_dataset(src(), out, "f", ["a", "b", "c"], bit_palette(3))
    msg = str(err.value)
    assert str(image) in msg and str(small) in msg and "image is 32x24 (WxH) but its mask is 12x10" in msg
    nothing_written(out)


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
    save(root / "masks" / "img_03.png", np.full((H, W), 9, np.uint8))  # the last train sample is bad
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
