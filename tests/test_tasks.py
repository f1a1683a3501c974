"""Tasks: several label sets read from one conversion (segframe/data/tasks.py). A source whose masks
store combined codes writes each task's map into the manifest; `data.task` relabels every mask as it
is read, and the class counts, empty-class checks and staleness check follow the task."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from segframe.data.browse import browse
from segframe.data.datamodule import SegDataModule
from segframe.data.preparation import check_labelled, conversion_diff, convert_dataset
from segframe.data.sample import IGNORE_INDEX, RawSample
from segframe.data.shards import read_manifest, write_dataset
from segframe.data.tasks import View, check_tasks, empty_in, view
from segframe.core.errors import ConfigError

# stored code = 3 * shape + part: shape 0..1 (none, tool), part 0..2; a task per digit
STORED = ["none", "none/p1", "none/p2", "tool", "tool/p1", "tool/p2"]
TASKS = {
    "shape": {"classes": ["background", "tool"], "palette": [[0, 0, 0], [255, 0, 0]], "map": [0, 0, 0, 1, 1, 1]},
    "part": {"classes": ["background", "p1", "p2"], "palette": [[0, 0, 0], [0, 255, 0], [0, 0, 255]],
             "map": [0, 1, 2, 0, 1, IGNORE_INDEX]},  # code 5 ignored by this task
}


class CodeSource:
    """Masks of stored codes: sample i holds codes 0, 3, 4 and 5 in four blocks (never 1 or 2)."""

    def __init__(self, n: int = 3):
        self.n = n

    def splits(self):
        return {"a": [("a", i) for i in range(self.n)], "b": [("b", i) for i in range(self.n)]}

    def load(self, item):
        mask = np.zeros((8, 8), np.uint8)
        mask[:4, 4:], mask[4:, :4], mask[4:, 4:] = 3, 4, 5
        return RawSample(f"{item[0]}/{item[1]}", np.full((8, 8, 3), 40 * item[1], np.uint8), mask)

    def options(self):
        return {"n": self.n}

    def fingerprint(self):
        return {"n": self.n}

    def stored_classes(self):
        return list(STORED), [[10 * i, 0, 0] for i in range(len(STORED))]

    def tasks(self):
        return TASKS


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "codes"
    data = OmegaConf.create({"name": "codes", "shard_dir": str(out), "shard_size": 2, "task": "part",
                             "classes": TASKS["part"]["classes"]})
    return data, convert_dataset(data, source=CodeSource())


def test_the_manifest_keeps_stored_classes_and_every_task(converted):
    data, manifest = converted
    assert manifest["classes"] == STORED and manifest["tasks"] == TASKS
    assert read_manifest(data.shard_dir)["tasks"] == TASKS
    # codes 1 and 2 never occur: warned per task, never about stored codes no task can miss
    assert manifest["warnings"] == ["task part: classes ['p2'] have no labelled pixels in any split"]


def test_a_task_relabels_every_mask_as_it_is_read(converted):
    data, _ = converted
    for task, want in (("shape", [[0, 1], [1, 1]]), ("part", [[0, 0], [1, IGNORE_INDEX]])):
        dm = SegDataModule(data.shard_dir, batch_size=2, num_workers=0, train_split="b", val_split="a", task=task)
        assert dm.classes == TASKS[task]["classes"] and dm.num_classes == len(TASKS[task]["classes"])
        assert dm.palette == TASKS[task]["palette"]
        _, masks = next(iter(dm.val_dataloader()))
        blocks = masks[0].numpy()[::4, ::4]
        np.testing.assert_array_equal(blocks, want)
        train_masks = next(iter(dm.train_dataloader()))[1]
        assert set(np.unique(train_masks.numpy())) <= set(range(dm.num_classes)) | {IGNORE_INDEX}
    # pixels per class through the map: 3 samples x 16 pixels per block
    assert SegDataModule(data.shard_dir, num_workers=0, task="shape").class_pixels("a") == [48, 144]
    assert SegDataModule(data.shard_dir, num_workers=0, task="part").class_pixels("a+b") == [192, 96, 0]


def test_a_conversion_with_tasks_needs_one_named_and_a_known_one(converted):
    data, manifest = converted
    with pytest.raises(ConfigError, match=r"choose one with data.task=NAME \(one of \['part', 'shape'\]\)"):
        SegDataModule(data.shard_dir, num_workers=0)
    with pytest.raises(ConfigError, match=r"data.task='parts': it was converted with tasks \['part', 'shape'\]"):
        view(manifest, "parts")
    plain = {"name": "x", "classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]]}
    with pytest.raises(ConfigError, match="its conversion has no tasks"):
        view(plain, "binary")
    assert view(plain, None) == View(None, ["a", "b"], [[0, 0, 0], [1, 1, 1]])


def test_staleness_and_empty_classes_follow_the_task(converted, caplog):
    data, manifest = converted
    assert conversion_diff(manifest, data, source=CodeSource()) == []
    other = OmegaConf.merge(data, {"task": "shape"})
    assert conversion_diff(manifest, other, source=CodeSource())  # config classes are part's, task is shape's
    assert conversion_diff(manifest, OmegaConf.merge(other, {"classes": TASKS["shape"]["classes"]}),
                           source=CodeSource()) == []
    assert empty_in(view(manifest, "part"), manifest["splits"]) == (["p2"], 96)
    before_tasks = {k: v for k, v in manifest.items() if k != "tasks"}  # a conversion from before tasks existed
    assert conversion_diff(before_tasks, data, source=CodeSource()) == [
        "it was converted without the per-task label maps data.task=part needs"]
    check_labelled(data, manifest, "a")  # p2 is empty: warned, and what is missing is the task's
    assert "data.task=part" in caplog.text and "'p2'" in caplog.text


def test_a_task_map_is_checked_before_anything_is_written(tmp_path):
    bad_length = {"t": {"classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "map": [0, 1]}}
    with pytest.raises(ConfigError, match="task 't' maps 2 stored codes; the conversion stores 6"):
        check_tasks(bad_length, len(STORED), "codes")
    outside = {"t": {"classes": ["a", "b"], "palette": [[0, 0, 0], [1, 1, 1]], "map": [0, 1, 2, 0, 0, 0]}}
    with pytest.raises(ConfigError, match=r"task 't' maps codes to \[2\] outside its 2 classes"):
        write_dataset(CodeSource(), tmp_path / "d", "codes", STORED, CodeSource().stored_classes()[1], tasks=outside)
    assert not (tmp_path / "d").exists()


def test_browse_shows_the_tasks_labels(converted, tmp_path):
    data, _ = converted
    grid, chart = browse(data.shard_dir, "a", 2, tmp_path / "b.png", task="shape")
    picture = np.asarray(Image.open(grid).convert("RGB"))
    assert (picture == [255, 0, 0]).all(axis=2).sum() > 0  # shape's "tool" colour, not a stored code's
    assert chart.is_file() and chart.stat().st_size > 0
    with pytest.raises(ConfigError, match="choose one with data.task=NAME"):
        browse(data.shard_dir, "a", 2, tmp_path / "c.png")
