"""Cross-validation from one conversion (issue 25): a dataset dealt into seeded folds, `data.fold=K`
choosing which of its splits validate and which train (a union, `a+b`), and `reproduce folds=...`
training every fold and judging the mean of the fold means."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segframe.data.manifest import split_info
from segframe.data.sources.splits import seeded_folds
from segframe.core.errors import ConfigError, ManifestError
from segframe.core.folds import fold_split

from helpers.cli import run_cli


def test_seeded_folds_deal_every_item_once_in_near_equal_folds():
    items = [(f"img{i:03d}", "x", "y") for i in range(23)]
    folds = seeded_folds(list(reversed(items)), 5, seed=0, name="test")  # file-system order does not matter
    assert list(folds) == [f"fold{k}" for k in range(5)] and sorted(len(f) for f in folds.values()) == [4, 4, 5, 5, 5]
    dealt = [it for f in folds.values() for it in f]
    assert sorted(dealt) == items and folds == seeded_folds(items, 5, seed=0, name="test")
    assert folds != seeded_folds(items, 5, seed=1, name="test")
    with pytest.raises(ConfigError, match="set data.num_folds between 2 and 23"):
        seeded_folds(items, 1, seed=0, name="test")


def test_the_fold_arithmetic():
    assert fold_split("train", None, 5, "kvasir_seg") == "train" and fold_split("val", None, None, "x") == "val"
    assert fold_split("val", 2, 5, "kvasir_seg") == "fold2"
    assert fold_split("train", 2, 5, "kvasir_seg") == "fold0+fold1+fold3+fold4"
    # EndoVis 2017, TernausNet's folds: instrument datasets [1, 3], [2, 5], [4, 8], [6, 7]
    ternaus = [[f"instrument_dataset_{i}" for i in pair] for pair in ([1, 3], [2, 5], [4, 8], [6, 7])]
    assert fold_split("val", 0, ternaus, "endovis2017") == "instrument_dataset_1+instrument_dataset_3"
    assert fold_split("train", 3, ternaus, "endovis2017") == "+".join(
        f"instrument_dataset_{i}" for i in (1, 3, 2, 5, 4, 8))
    with pytest.raises(ConfigError, match="needs data.num_folds.*python -m segframe.convert data=kvasir_seg data.num_folds=5"):
        fold_split("val", 1, None, "kvasir_seg")
    with pytest.raises(ConfigError, match="has 4 folds, numbered 0 to 3"):
        fold_split("val", 4, ternaus, "endovis2017")


def test_a_union_of_splits_sums_its_parts():
    manifest = {"name": "d", "splits": {
        "fold0": {"num_samples": 2, "shards": [{"name": "a"}], "class_pixels": [5, 1], "ignore_pixels": 3},
        "fold1": {"num_samples": 3, "shards": [{"name": "b"}, {"name": "c"}], "class_pixels": [2, 2], "ignore_pixels": 0}}}
    union = split_info(manifest, "fold0+fold1", "/data/d")
    assert union == {"num_samples": 5, "shards": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                     "class_pixels": [7, 3], "ignore_pixels": 3}
    with pytest.raises(ManifestError, match=r"no split .train. .*into 2 folds for cross-validation: pass "
                                            r"data\.num_folds=2 data\.fold=K \(K from 0 to 1\)"):
        split_info(manifest, "train", "/data/d")


@pytest.mark.slow  # two folds trained and evaluated through reproduce (~40 s)
def test_reproduce_cross_validates_shapes_over_two_folds(tmp_path):
    folder = tmp_path / "conf" / "experiment"
    folder.mkdir(parents=True)
    (folder / "tiny_cv.yaml").write_text("""# @package _global_
defaults:
  - override /data: shapes
  - override /model: fcn32s
  - override /optimizer: adamw
  - override /logger: none
model: {backbone: resnet18, pretrained: false}
data: {num_folds: 2, crop_size: 48, shard_size: 8, source: {num_train: 12, num_val: 4, size: 48}}
datamodule: {batch_size: 4, eval_batch_size: 4, num_workers: 0}
optimizer: {lr: 0.003}
trainer: {max_epochs: 1}
report: {num_images: 0}
reference: {recipe: tiny, data: tiny shapes, source: test, seeds: [0], mean: {miou: 10.0}, tolerance: {miou: 90.0}}
""")
    env = {"SEGFRAME_EXPERIMENTS": str(folder)}
    res = run_cli("reproduce", "experiment=tiny_cv", "folds=0,1", f"out={tmp_path / 'runs'}",
                  f"hydra.searchpath=[file://{tmp_path / 'conf'}]", f"paths.data_dir={tmp_path / 'data'}",
                  cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / "shapes" / "manifest.json").read_text())
    assert {k: v["num_samples"] for k, v in manifest["splits"].items()} == {"fold0": 8, "fold1": 8}  # converted once
    for fold, other in ((0, 1), (1, 0)):
        metrics = json.loads((tmp_path / "runs" / f"fold{fold}" / "tiny_cv" / "seed0" / "metrics.json").read_text())
        assert metrics["split"] == f"fold{fold}" and metrics["num_samples"] == 8
        card = (tmp_path / "runs" / f"fold{fold}" / "tiny_cv" / "seed0" / "MODEL_CARD.md").read_text()
        assert f"| train split | fold{other} (8 images) |" in card
    result = json.loads((folder / "results" / "tiny_cv.json").read_text())
    miou = result["metrics"]["miou"]
    per_fold = [100 * r["miou"] for r in sorted(result["runs"], key=lambda r: r["fold"])]
    assert result["folds"] == [0, 1] and [r["fold"] for r in result["runs"]] == [0, 1]
    assert miou["reproduced"] == pytest.approx(sum(per_fold) / 2, abs=0.01)
    assert miou["spread"] == pytest.approx(max(per_fold) - min(per_fold), abs=0.02)
    assert list(miou["per_fold"].values()) == pytest.approx(per_fold, abs=0.01)
    assert "per fold 0: " in res.stdout
    # the converter's "look at it" command works on a conversion into folds (no val split): it shows fold0
    browse = run_cli("convert", "data=shapes", f"paths.data_dir={tmp_path / 'data'}", "data.num_folds=2",
                     "data.source.num_train=12", "data.source.num_val=4", "data.source.size=48", "browse=true",
                     "browse_count=2", f"hydra.run.dir={tmp_path / 'browse'}", cwd=tmp_path)
    assert browse.returncode == 0 and (tmp_path / "browse" / "browse-shapes-fold0.png").is_file(), browse.stderr[-2000:]
    refused = run_cli("reproduce", "experiment=tiny_cv", "folds=0", "data.fold=1", cwd=tmp_path, env=env)
    assert refused.returncode == 2 and "use folds=K, not data.fold=K" in refused.stderr
