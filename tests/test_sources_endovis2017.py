"""The EndoVis 2017 converter on the real layout at the real 1920x1080 size (tests/helpers/endovis2017.py):
the three task masks decoded from the one stored mask equal TernausNet's prepare_data.py (re-implemented
here from its loop) for every label variant, TernausNet's crop, RGB frames, the messages, and conversion
into one split per instrument dataset."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from segframe.data.sample import SampleError, decode_image
from segframe.data.shards import write_dataset
from segframe.data.sources import endovis2017
from segframe.data.sources.endovis2017 import (TASKS, EndoVis2017Source, decode, encode, fold_splits, instrument_id,
                                               stored_classes)
from segframe.core.errors import DatasetNotFoundError

from helpers.datasets import nothing_written, read_split
from helpers.endovis2017 import DATASETS, THREE_CHANNEL, frame_image, ground_truth_folders, make_endovis2017

SPLITS = [f"instrument_dataset_{n}" for n in DATASETS]
CROP = (slice(28, 28 + 1024), slice(320, 320 + 1280))  # TernausNet: h_start, w_start = 28, 320; 1024x1280
SMALL = (108, 192)


def ternaus(named_masks: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TernausNet prepare_data.py's per-frame loop (binary, parts, instruments), with the folder's name
    where it tests str(mask_folder), before its crop and its x255/x85/x32 scaling for saving."""
    shape = named_masks[0][1].shape
    mask_binary, mask_parts, mask_instruments = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    for mask_folder, mask in named_masks:
        if 'Bipolar_Forceps' in mask_folder:
            mask_instruments[mask > 0] = 1
        elif 'Prograsp_Forceps' in mask_folder:
            mask_instruments[mask > 0] = 2
        elif 'Large_Needle_Driver' in mask_folder:
            mask_instruments[mask > 0] = 3
        elif 'Vessel_Sealer' in mask_folder:
            mask_instruments[mask > 0] = 4
        elif 'Grasping_Retractor' in mask_folder:
            mask_instruments[mask > 0] = 5
        elif 'Monopolar_Curved_Scissors' in mask_folder:
            mask_instruments[mask > 0] = 6
        elif 'Other' in mask_folder:
            mask_instruments[mask > 0] = 7
        if 'Other' not in mask_folder:
            mask_binary += mask
            mask_parts[mask == 10] = 1  # Shaft
            mask_parts[mask == 20] = 2  # Wrist
            mask_parts[mask == 30] = 3  # Claspers
    return (mask_binary > 0).astype(np.uint8), mask_parts.astype(np.uint8), mask_instruments.astype(np.uint8)


def ternaus_files(root: Path, sample_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ternaus() on a frame's mask files, read as prepare_data.py reads them (cv2.imread(path, 0)),
    folders in sorted order; full frame."""
    dataset, stem = sample_id.split("/")
    folders = sorted((root / "train" / dataset / "ground_truth").iterdir())
    return ternaus([(f.name, cv2.imread(str(f / f"{stem}.png"), 0)) for f in folders])


def check_tasks(stored: np.ndarray, want: tuple[np.ndarray, ...], where: str) -> None:
    for task, expected in zip(("binary", "parts", "instruments"), want):
        got = decode(stored, task)
        assert (got == expected).all(), f"{where} {task}: {(got != expected).sum()} pixels differ"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_endovis2017(tmp_path_factory.mktemp("raw") / "endovis2017")


def test_encoding_tables():
    names = stored_classes()
    assert len(names) == len(set(names)) == 40 == len(endovis2017.STORED_PALETTE)
    assert names[0] == "background" and names[5 * 2 + 3] == "Prograsp Forceps/wrist" and names[35] == "Other"
    assert names[5 * 4 + 1] == "Vessel Sealer/unlabelled part" and names[5 * 7 + 4] == "Other/claspers"
    assert len({tuple(c) for c in endovis2017.STORED_PALETTE}) == 40
    assert all(0 <= v <= 255 for c in endovis2017.STORED_PALETTE for v in c)
    assert TASKS["binary"]["classes"] == ["background", "instrument"]
    assert TASKS["parts"]["classes"] == ["background", "shaft", "wrist", "claspers"]
    assert TASKS["instruments"]["classes"] == ["background", *endovis2017.INSTRUMENTS]
    for task in TASKS.values():
        assert len(task["map"]) == 40 and len(task["palette"]) == len(task["classes"])
        assert max(task["map"]) == len(task["classes"]) - 1
    source = EndoVis2017Source("nowhere")
    assert source.stored_classes() == (names, endovis2017.STORED_PALETTE) and source.tasks() == TASKS
    assert source.tasks() is not TASKS  # a copy: the caller may edit it
    assert fold_splits() == [["instrument_dataset_1", "instrument_dataset_3"], ["instrument_dataset_2",
                             "instrument_dataset_5"], ["instrument_dataset_4", "instrument_dataset_8"],
                             ["instrument_dataset_6", "instrument_dataset_7"]]
    real = {"Maryland_Bipolar_Forceps_labels": 1, "Bipolar_Forceps_labels": 1, "Left_Prograsp_Forceps_labels": 2,
            "Right_Prograsp_Forceps_labels": 2, "Prograsp_Forceps_labels": 2, "Left_Large_Needle_Driver_labels": 3,
            "Right_Large_Needle_Driver_labels": 3, "Left_Large_Needle_Driver": 3, "Vessel_Sealer_labels": 4,
            "Grasping_Retractor_labels": 5, "Right_Monopolar_Curved_Scissors_labels": 6,
            "Monopolar_Curved_Scissors_labels": 6, "Other_labels": 7, "Suction_Irrigator_labels": None}
    assert {name: instrument_id(name) for name in real} == real


def test_encode_equals_ternausnet_on_random_overlaps():
    """Random masks (parts, 40, 255, overlaps) in random folder lists: decoding gives TernausNet's masks."""
    rng = np.random.default_rng(0)
    names = ["Maryland_Bipolar_Forceps_labels", "Left_Prograsp_Forceps_labels", "Right_Large_Needle_Driver",
             "Vessel_Sealer_labels", "Grasping_Retractor_labels", "Monopolar_Curved_Scissors_labels", "Other_labels"]
    seen = set()
    for _ in range(60):
        chosen = sorted(rng.choice(names, size=rng.integers(1, 5), replace=False))
        masks = [(n, rng.choice(np.array([0, 0, 0, 10, 20, 30, 40, 255], np.uint8), size=(16, 16))) for n in chosen]
        stored = encode(masks)
        seen |= set(np.unique(stored).tolist())
        check_tasks(stored, ternaus(masks), str(chosen))
    assert seen == set(range(40)) - {1, 2, 3, 4} - {5 * i for i in range(1, 7)}  # all that can occur


def test_tasks_equal_ternausnet_on_every_variant(raw):
    source = EndoVis2017Source(str(raw))
    splits = source.splits()
    assert list(splits) == SPLITS
    assert [it[0] for it in splits["instrument_dataset_3"]] == ["instrument_dataset_3/frame000",
                                                               "instrument_dataset_3/frame001"]
    assert pickle.loads(pickle.dumps(splits)) == splits
    codes: set[int] = set()
    for split, items in splits.items():
        n = int(split.rsplit("_", 1)[1])
        for f, item in enumerate(items):
            sample = source.load(item)
            assert sample.id == item[0] == f"{split}/frame{f:03d}"
            assert sample.image.shape == (1024, 1280, 3) and sample.mask.shape == (1024, 1280)
            assert (sample.image == frame_image(n, f)[CROP]).all()  # RGB (red 180 + ...), cropped like the masks
            full = ternaus_files(raw, sample.id)
            check_tasks(sample.mask, tuple(m[CROP] for m in full), sample.id)
            codes |= set(np.unique(sample.mask).tolist())
            # a crop's edges cut through instruments (so an offset error would show)
            assert full[0][27, :].any() or full[0][:, 1600].any() or full[0][1052, :].any()
    assert {c // 5 for c in codes} == set(range(8))  # every instrument id
    assert {c % 5 for c in codes if c // 5 != 7} == {0, 1, 2, 3, 4}  # value 40 (state 1) and all three parts
    assert {35, 37, 38} <= codes  # Other alone, and Other over a non-Other instrument's shaft and wrist
    # the variants are in the raw files
    gt = raw / "train" / "instrument_dataset_1" / "ground_truth"
    assert cv2.imread(str(gt / "Right_Prograsp_Forceps_labels" / "frame000.png"), cv2.IMREAD_UNCHANGED).ndim == 3
    assert (1, "Right_Prograsp_Forceps_labels") in THREE_CHANNEL
    assert "Left_Large_Needle_Driver" in ground_truth_folders(3)
    left = cv2.imread(str(gt / "Left_Prograsp_Forceps_labels" / "frame000.png"), 0)
    maryland = cv2.imread(str(gt / "Maryland_Bipolar_Forceps_labels" / "frame000.png"), 0)
    assert ((left > 0) & (maryland > 0)).any() and ((left == 30) & (maryland == 10)).any()  # two overlapping


def test_crop_offsets_and_uncropped_frames(raw):
    item = EndoVis2017Source(str(raw)).splits()["instrument_dataset_1"][0]
    cropped = EndoVis2017Source(str(raw)).load(item)
    full = frame_image(1, 0)
    assert (full[27, :] == 0).all() and (full[:, 319] == 0).all() and full[28, 320].all()  # borders outside
    assert (cropped.image[0, 0] == full[28, 320]).all()
    assert cropped.image[0, :, 0].all() and cropped.image[:, 0, 0].all()  # red 185 inside the borders
    # every non-Other mask marks (28, 320) claspers and (27, 319), (27, 320), (28, 319) wrist
    assert decode(cropped.mask, "parts")[0, 0] == 3 and decode(cropped.mask, "parts")[0, 1] != 2

    source = EndoVis2017Source(str(raw), crop_frames=False)
    assert source.options() == {"root": str(raw), "crop_frames": False}
    whole = source.load(item)
    assert whole.image == Path(item[1]).read_bytes()  # the frame's own PNG bytes
    assert (decode_image(whole.image) == full).all() and whole.mask.shape == (1080, 1920)
    parts = decode(whole.mask, "parts")
    assert parts[28, 320] == 3 and parts[27, 319] == parts[27, 320] == parts[28, 319] == 2
    check_tasks(whole.mask, ternaus_files(raw, item[0]), item[0])
    assert (whole.mask[CROP] == cropped.mask).all()


def test_convert_one_split_per_dataset(raw, tmp_path):
    out = tmp_path / "data" / "endovis2017"
    source = EndoVis2017Source(str(raw))
    manifest = write_dataset(source, out, "endovis2017", *source.stored_classes(), shard_size=3, tasks=source.tasks())
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {s: 2 for s in SPLITS}
    assert manifest["classes"] == stored_classes() and manifest["skipped"] == []
    assert manifest["tasks"] == TASKS and manifest["warnings"] == []  # every task's classes have pixels
    assert manifest["source"]["options"] == {"root": str(raw), "crop_frames": True}
    fp = manifest["source"]["fingerprint"]
    assert fp["files"] == 16 + 2 * 24 and fp["ground_truth"]["instrument_dataset_3"] == list(ground_truth_folders(3))
    samples = read_split(out, "instrument_dataset_5", 40)
    assert sorted(samples) == ["instrument_dataset_5_frame000", "instrument_dataset_5_frame001"]
    entries, image, mask, meta = samples["instrument_dataset_5_frame001"]
    assert "png" in entries and (meta["height"], meta["width"]) == (1024, 1280)
    assert (image == frame_image(5, 1)[CROP]).all()
    check_tasks(mask, tuple(m[CROP] for m in ternaus_files(raw, "instrument_dataset_5/frame001")), meta["id"])


def test_missing_or_partial_layout(tmp_path):
    out = tmp_path / "data" / "endovis2017"
    with pytest.raises(DatasetNotFoundError) as err:
        write_dataset(EndoVis2017Source(str(tmp_path / "nope")), out, "endovis2017",
                      *EndoVis2017Source("").stored_classes())
    msg = str(err.value)
    for text in ("raw dataset not found or incomplete", "train/instrument_dataset_1/left_frames",
                 "train/instrument_dataset_8/ground_truth", "registration",
                 "https://endovissub2017-roboticinstrumentsegmentation.grand-challenge.org/",
                 "python -m segframe.convert data=endovis2017 data.root="):
        assert text in msg, text
    nothing_written(out)
    root = make_endovis2017(tmp_path / "part", datasets=(1, 2, 3), frames=1, size=SMALL, test_frames=0)
    with pytest.raises(DatasetNotFoundError, match=r"missing train/instrument_dataset_4/left_frames, "):
        EndoVis2017Source(str(root)).splits()


def test_bad_ground_truth_folders_and_files(tmp_path):
    root = make_endovis2017(tmp_path / "r", frames=1, size=SMALL, test_frames=0)
    gt = root / "train" / "instrument_dataset_2" / "ground_truth"
    (gt / "Suction_Irrigator_labels").mkdir()
    with pytest.raises(SampleError) as err:
        EndoVis2017Source(str(root)).splits()
    assert str(gt / "Suction_Irrigator_labels") in str(err.value)
    assert "Bipolar_Forceps" in str(err.value) and "Monopolar_Curved_Scissors, Other" in str(err.value)
    (gt / "Suction_Irrigator_labels").rmdir()
    (gt / ".DS_Store").write_bytes(b"")  # hidden files are not folders of masks

    source = EndoVis2017Source(str(root), crop_frames=False)
    item = source.splits()["instrument_dataset_2"][0]
    (gt / "Other_labels" / "frame000.png").unlink()
    with pytest.raises(SampleError, match=r"instrument_dataset_2/frame000: mask file .*Other_labels/frame000.png is "
                                          "missing"):
        source.load(item)
    with pytest.raises(SampleError, match="too small for the 1280x1024 crop.*data.crop_frames=false"):
        EndoVis2017Source(str(root)).load(EndoVis2017Source(str(root)).splits()["instrument_dataset_1"][0])

    shutil.rmtree(root / "train" / "instrument_dataset_7" / "ground_truth")
    (root / "train" / "instrument_dataset_7" / "ground_truth").mkdir()
    with pytest.raises(SampleError, match=r"instrument_dataset_7/ground_truth has no ground-truth folders"):
        EndoVis2017Source(str(root)).splits()


def test_masks_of_another_size_are_skipped(tmp_path):
    bad = "instrument_dataset_2/frame001"
    root = make_endovis2017(tmp_path / "r", frames=2, size=SMALL, odd_size=[bad], test_frames=0)
    source = EndoVis2017Source(str(root), crop_frames=False)
    item = next(it for it in source.splits()["instrument_dataset_2"] if it[0] == bad)
    with pytest.raises(SampleError) as err:
        source.load(item)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: frame and masks differ in size") and "frame001.png: 192x108" in msg
    assert "Left_Prograsp_Forceps_labels/frame001.png: 184x100" in msg

    out = tmp_path / "data" / "endovis2017"
    with pytest.raises(SampleError, match="on_bad=skip"):
        write_dataset(source, out, "endovis2017", *source.stored_classes())
    nothing_written(out)
    manifest = write_dataset(source, out, "endovis2017", *source.stored_classes(), on_bad="skip", num_workers=2)
    counts = {s: v["num_samples"] for s, v in manifest["splits"].items()}
    assert counts == {s: 1 if s == "instrument_dataset_2" else 2 for s in SPLITS}
    assert [s["item"][0] for s in manifest["skipped"]] == [bad]
    assert "differ in size" in manifest["skipped"][0]["problem"]
    samples = read_split(out, "instrument_dataset_2", 40)
    assert list(samples) == ["instrument_dataset_2_frame000"]
    assert samples["instrument_dataset_2_frame000"][1].shape == (*SMALL, 3)
