"""The Kvasir-SEG converter on tiny fixtures in the dataset's real layout (helpers.datasets.make_kvasir),
and convert's CLI on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segframe.data.sample import SampleError
from segframe.data.shards import read_manifest, write_dataset
from segframe.data.sources import kvasir
from segframe.data.sources.kvasir import KvasirSegSource

from helpers.cli import run_cli
from helpers.datasets import KVASIR_IDS, load_data_yaml, make_kvasir, read_split, save


def _thresholded(jpeg: Path) -> np.ndarray:
    return (np.asarray(Image.open(jpeg).convert("L")) >= 128).astype(np.uint8)


def test_kvasir_jpeg_masks_thresholded(tmp_path):
    root = tmp_path / "raw" / "Kvasir-SEG"
    made = make_kvasir(root)
    (root / "kavsir_bboxes.json").write_text("{}")  # shipped with the dataset, ignored
    out = tmp_path / "data" / "kvasir_seg"
    manifest = write_dataset(KvasirSegSource(str(root), num_val=2, seed=0), out, "kvasir_seg",
                             list(kvasir.CLASSES), kvasir.PALETTE)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 4, "val": 2}
    got = {**read_split(out, "train", 2), **read_split(out, "val", 2)}
    assert sorted(got) == sorted(KVASIR_IDS)
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
    assert manifest["source"]["options"] == {"root": str(root), "num_val": 2, "seed": 0, "split_dir": None,
                                              "num_folds": None}


def test_kvasir_threshold_is_128(tmp_path):
    """A grey ramp JPEG mask: 127 is background, 128 is polyp."""
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    path = save(tmp_path / "ramp.jpg", ramp, "JPEG", quality=100)
    grey = np.asarray(Image.open(path).convert("L"))
    assert (grey == 127).any() and (grey == 128).any()
    mask = kvasir.read_jpeg_mask(path)
    np.testing.assert_array_equal(mask, (grey >= 128).astype(np.uint8))
    assert mask.dtype == np.uint8 and mask.shape == (8, 256)


def _val_ids(source: KvasirSegSource) -> list[str]:
    return sorted(it[0] for it in source.splits()["val"])


def test_kvasir_seeded_split(tmp_path):
    root = tmp_path / "Kvasir-SEG"
    make_kvasir(root)
    a, b = KvasirSegSource(str(root), num_val=2, seed=0), KvasirSegSource(str(root), num_val=2, seed=0)
    assert _val_ids(a) == _val_ids(b)
    splits = a.splits()
    assert len(splits["val"]) == 2 and len(splits["train"]) == 4
    assert sorted(it[0] for it in splits["train"] + splits["val"]) == sorted(KVASIR_IDS)
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
    make_kvasir(root)
    lists = tmp_path / "kvasir_lists"
    lists.mkdir()
    (lists / "train.txt").write_text("\n".join(KVASIR_IDS[:3]) + "\n\n")
    (lists / "val.txt").write_text(f"  {KVASIR_IDS[5]}  \n{KVASIR_IDS[3]}\n")
    source = KvasirSegSource(str(root), num_val=99, seed=0, split_dir=str(lists))
    splits = source.splits()
    assert [it[0] for it in splits["train"]] == KVASIR_IDS[:3]
    assert [it[0] for it in splits["val"]] == [KVASIR_IDS[5], KVASIR_IDS[3]]
    out = tmp_path / "data" / "kv"
    manifest = write_dataset(source, out, "kvasir_seg", list(kvasir.CLASSES), kvasir.PALETTE)
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 3, "val": 2}
    assert sorted(read_split(out, "val", 2)) == sorted([KVASIR_IDS[5], KVASIR_IDS[3]])
    lists_fp = manifest["source"]["fingerprint"]["lists"]
    assert set(lists_fp) == {str(lists / "train.txt"), str(lists / "val.txt")}
    assert lists_fp[str(lists / "val.txt")]["bytes"] == len((lists / "val.txt").read_bytes())

    (lists / "val.txt").write_text(f"{KVASIR_IDS[4]}\nno_such_polyp\n")
    with pytest.raises(SampleError, match=r"split 'val' lists 1 id\(s\) with no image.*no_such_polyp"):
        KvasirSegSource(str(root), split_dir=str(lists)).splits()


def test_kvasir_conf_matches_module():
    cfg = load_data_yaml("kvasir_seg")
    assert list(cfg.classes) == list(kvasir.CLASSES) == ["background", "polyp"]
    assert [list(c) for c in cfg.palette] == kvasir.PALETTE
    assert cfg.num_val == 120 and cfg.seed == 0 and cfg.split_dir is None


# --------------------------------------------------------------------------- CLI


def test_cli_convert_and_browse_kvasir(tmp_path):
    root = tmp_path / "raw" / "Kvasir-SEG"
    make_kvasir(root)
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
