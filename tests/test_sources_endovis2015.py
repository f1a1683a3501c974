"""The EndoVis 2015 converter on real AVI files written with OpenCV (MJPG, so the label videos carry
compression blur) in the dataset's layout, Dataset1's Left/Right label pair included; and convert ->
a tiny train through the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate

from segframe.data.sample import IGNORE_INDEX, SampleError
from segframe.data.shards import read_manifest, write_dataset
from segframe.data.sources import endovis2015
from segframe.data.sources.endovis2015 import EndoVis2015Source, keep_largest, snap
from segframe.core.errors import ConfigError, DatasetNotFoundError

from helpers.cli import ok, run_cli
from helpers.config import compose, tiny
from helpers.datasets import load_data_yaml, nothing_written, read_split

H, W = 48, 64
FRAMES = 3
LEVEL = np.array(endovis2015.LEVELS, dtype=np.uint8)


def write_avi(path: Path, frames: list[np.ndarray]) -> Path:
    """RGB or grey uint8 frames -> an MJPG AVI (lossy: grey label levels come back blurred)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) if f.ndim == 2 else np.ascontiguousarray(f[:, :, ::-1]))
    writer.release()
    return path


def instrument(dataset: int, frame: int, left: bool = True) -> np.ndarray:
    """Class ids of one instrument: a manipulator block beside a shaft block, moving with the frame,
    with edges on and off the 8-pixel JPEG grid."""
    m = np.zeros((H, W), np.uint8)
    x = 3 * frame + dataset
    if left:
        m[8:24, x:x + 12] = 1
        m[20:44, x + 12:x + 27] = 2
    else:  # its shaft crosses the left one's manipulator
        m[28:44, x + 40:x + 52] = 1
        m[4:22, x + 6:x + 40] = 2
    return m


def video_frame(dataset: int, frame: int) -> np.ndarray:
    """A smooth RGB frame with a red cast (so a BGR/RGB swap shows)."""
    yy, xx = np.mgrid[0:H, 0:W]
    rgb = np.stack([180 + 0 * xx, 2 * yy + 10 * frame, xx + 20 * dataset], axis=2)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_endovis(root: Path, frames: int = FRAMES, short: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Segmentation_Robotic_Training/Training/Dataset1..4 as distributed: Video.avi with Segmentation.avi,
    Dataset1 with a Left_ and a Right_Instrument_Segmentation.avi whose instruments overlap (left's
    manipulator under right's shaft). Returns id -> the clean class map. `short`: a file -> its frame count."""
    clean = {}
    short = short or {}
    for n in endovis2015.DATASETS:
        folder = root / "Training" / f"Dataset{n}"
        count = short.get(f"Dataset{n}/Video.avi", frames)
        write_avi(folder / "Video.avi", [video_frame(n, i) for i in range(count)])
        for name in endovis2015.label_videos(n):
            left = not name.startswith("Right")
            maps = [instrument(n, i, left) for i in range(frames)]
            write_avi(folder / name, [LEVEL[m] for m in maps[:short.get(f"Dataset{n}/{name}", frames)]])
            for i, m in enumerate(maps):
                clean[f"Dataset{n}/frame{i:04d}"] = np.maximum(clean.get(f"Dataset{n}/frame{i:04d}", m), m)
    return clean


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("raw") / "Segmentation_Robotic_Training"
    return root, make_endovis(root)


def _interior(mask: np.ndarray, margin: int = 2) -> np.ndarray:
    """Pixels at least `margin` away from any class edge (where the codec's blur cannot reach)."""
    edge = np.zeros(mask.shape, bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    return ~cv2.dilate(edge.astype(np.uint8), np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)


def test_snap_to_nearest_level():
    ramp = np.arange(256, dtype=np.uint8)
    nearest = np.abs(ramp[:, None].astype(int) - np.array(endovis2015.LEVELS)).argmin(axis=1)  # ties: lower
    np.testing.assert_array_equal(snap(ramp[None, :]), nearest[None, :])
    np.testing.assert_array_equal(snap(np.repeat(ramp[None, :, None], 3, axis=2)), nearest[None, :])
    assert snap(np.array([[35, 36, 115, 116]], np.uint8)).tolist() == [[0, 1, 1, 2]]
    # a colour-tinted grey snaps by its channel mean
    assert snap(np.array([[[60, 70, 80], [150, 160, 170], [0, 10, 20]]], np.uint8)).tolist() == [[1, 2, 0]]


def test_largest_component_marks_fragments_ignored():
    labels = np.zeros((10, 12), np.uint8)
    labels[1:5, 1:6] = 1      # big manipulator region
    labels[7:9, 9:11] = 1     # a fragment of it
    labels[6, 0] = 2          # a single shaft pixel: its only region, kept
    labels[5, 6] = 1          # touches the big region diagonally: 8-connected, kept
    out = keep_largest(labels)
    assert (out[1:5, 1:6] == 1).all() and out[5, 6] == 1 and out[6, 0] == 2
    assert (out[7:9, 9:11] == IGNORE_INDEX).all()
    assert (out[labels == 0] == 0).all()


def test_convert_snaps_merges_and_splits(raw, tmp_path):
    root, clean = raw
    out = tmp_path / "data" / "endovis2015"
    source = EndoVis2015Source(str(root))
    manifest = write_dataset(source, out, "endovis2015", list(endovis2015.CLASSES), endovis2015.PALETTE)
    counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
    assert counts == {"train": 3 * FRAMES, "val": FRAMES}
    train, val = read_split(out, "train", 3), read_split(out, "val", 3)
    assert sorted(v[3]["id"] for v in val.values()) == [f"Dataset2/frame{i:04d}" for i in range(FRAMES)]
    assert sorted({v[3]["id"].split("/")[0] for v in train.values()}) == ["Dataset1", "Dataset3", "Dataset4"]
    assert "Dataset1_frame0002" in train  # the shard key of Dataset1/frame0002

    blurred = cv2.VideoCapture(str(root / "Training" / "Dataset3" / "Segmentation.avi")).read()[1]
    assert not np.isin(blurred, LEVEL).all()  # the fixture's labels do carry codec blur
    agree = []
    for sample, image, mask, meta in {**train, **val}.values():
        want = clean[meta["id"]]
        assert image.shape == (H, W, 3) and mask.shape == (H, W) and "png" in sample
        assert set(np.unique(mask).tolist()) <= {0, 1, 2}
        inside = _interior(want)
        np.testing.assert_array_equal(mask[inside], want[inside])  # levels recovered exactly off the edges
        agree.append((mask == want).mean())
        n, i = int(meta["id"][7]), int(meta["id"][-4:])
        assert np.abs(image.astype(int) - video_frame(n, i)).mean() < 6  # RGB order kept, frame i paired with i
    assert min(agree) > 0.93
    # Dataset1: both instruments, and left's manipulator under right's shaft became shaft
    d1 = {v[3]["id"]: v[2] for v in train.values() if v[3]["id"].startswith("Dataset1")}["Dataset1/frame0001"]
    left, right = instrument(1, 1, True), instrument(1, 1, False)
    both = _interior(clean["Dataset1/frame0001"]) & (left == 1) & (right == 2)
    assert both.sum() > 20 and (d1[both] == 2).all()
    for part in (left, right):
        for cls in (1, 2):
            assert (d1[_interior(part) & _interior(clean['Dataset1/frame0001']) & (part == cls) & ~both] == cls).all()
    fp = manifest["source"]["fingerprint"]
    assert fp["frames"] == {f"Dataset{n}": FRAMES for n in endovis2015.DATASETS} and fp["files"] == 10
    assert manifest["source"]["options"] == {"root": str(root), "val_dataset": 2, "largest_component": False}

    # two worker processes, each reading its frames forward: the same shards
    again = write_dataset(EndoVis2015Source(str(root)), tmp_path / "w2", "endovis2015",
                          list(endovis2015.CLASSES), endovis2015.PALETTE, shard_size=2, num_workers=2)
    single = write_dataset(EndoVis2015Source(str(root)), tmp_path / "w0", "endovis2015",
                           list(endovis2015.CLASSES), endovis2015.PALETTE, shard_size=2)
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in single["splits"]["train"]["shards"]]


def test_val_dataset_and_largest_component_options(raw):
    root, _ = raw
    splits = EndoVis2015Source(str(root), val_dataset=4).splits()
    assert [it[0] for it in splits["val"]] == [f"Dataset4/frame{i:04d}" for i in range(FRAMES)]
    assert {it[0].split("/")[0] for it in splits["train"]} == {"Dataset1", "Dataset2", "Dataset3"}
    first = splits["train"][0]
    assert first[0] == "Dataset1/frame0000" and first[3] == 0 and len(first[2]) == 2
    assert first[2][0].endswith("Left_Instrument_Segmentation.avi")
    with pytest.raises(ConfigError, match=r"data.val_dataset=5.*\[1, 2, 3, 4\]"):
        EndoVis2015Source(str(root), val_dataset=5)
    src = EndoVis2015Source(str(root), largest_component=True)
    item = src.splits()["train"][0]
    assert set(np.unique(src.load(item).mask).tolist()) <= {0, 1, 2, IGNORE_INDEX}
    with pytest.raises(SampleError, match=r"Video.avi: (cannot read frame|frame 7)"):
        src.load((item[0], item[1], item[2], 7))  # past the end: a bad sample, which on_bad=skip can skip


def test_missing_or_partial_layout(tmp_path):
    out = tmp_path / "data" / "endovis2015"
    with pytest.raises(DatasetNotFoundError) as err:
        write_dataset(EndoVis2015Source(str(tmp_path / "nope")), out, "endovis2015", ["a", "b", "c"], [[0] * 3] * 3)
    msg = str(err.value)
    for text in ("raw dataset not found or incomplete", "Training/Dataset1/Left_Instrument_Segmentation.avi",
                 "Training/Dataset4/Segmentation.avi", "https://endovissub-instrument.grand-challenge.org/",
                 "registration", "python -m segframe.convert data=endovis2015 data.root="):
        assert text in msg, text
    nothing_written(out)

    root = tmp_path / "Segmentation_Robotic_Training"
    make_endovis(root, frames=1)
    (root / "Training" / "Dataset1" / "Right_Instrument_Segmentation.avi").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"missing Training/Dataset1/Right_Instrument_Segmentation.avi\."):
        EndoVis2015Source(str(root)).splits()


def test_frame_count_mismatch_names_the_files(tmp_path):
    root = tmp_path / "Segmentation_Robotic_Training"
    make_endovis(root, frames=3, short={"Dataset3/Segmentation.avi": 2})
    with pytest.raises(SampleError) as err:
        EndoVis2015Source(str(root)).splits()
    msg = str(err.value)
    assert "Dataset3" in msg and "Video.avi: 3" in msg and "Segmentation.avi: 2" in msg


def test_conf_matches_module(tmp_path):
    cfg = load_data_yaml("endovis2015")
    assert list(cfg.classes) == list(endovis2015.CLASSES) == ["background", "manipulator", "shaft"]
    assert [list(c) for c in cfg.palette] == endovis2015.PALETTE
    assert cfg.val_dataset == 2 and cfg.largest_component is False
    composed = compose(["data=endovis2015", f"data.root={tmp_path}", f"paths.data_dir={tmp_path / 'd'}",
                        "data.val_dataset=3"], "convert")
    source = instantiate(composed.data.source)
    assert type(source) is EndoVis2015Source and source.root == tmp_path and source.val_dataset == 3
    assert composed.data.shard_dir == str(tmp_path / "d" / "endovis2015")


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_cli_convert_then_train(raw, tmp_path):
    root, _ = raw
    data = [f"data.root={root}", f"paths.data_dir={tmp_path / 'data'}"]
    res = run_cli("convert", "data=endovis2015", *data, "num_workers=0", f"hydra.run.dir={tmp_path / 'c'}",
                  cwd=tmp_path)
    ok(res)
    assert "converted endovis2015" in res.stdout
    manifest = read_manifest(tmp_path / "data" / "endovis2015")
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 9, "val": 3}
    run = tmp_path / "run"
    overrides = tiny("data.crop_size=32", "trainer.max_steps=2", "trainer.max_epochs=1",
                     "datamodule.eval_batch_size=3", drop=["data.source", "data.shard_size"])
    ok(run_cli("train", "data=endovis2015", *data, *overrides, f"hydra.run.dir={run}", cwd=tmp_path))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "endovis2015" and metrics["steps"] == 2 and metrics["num_samples"] == 3
    assert 0.0 <= metrics["miou"] <= 1.0
    assert hashlib.sha256((run / "checkpoints" / "last.ckpt").read_bytes()).hexdigest()
