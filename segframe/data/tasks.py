"""Tasks: several label sets read from one conversion. A converter whose masks store a combined code
(EndoVis 2017: an instrument type and a part in one value) writes, beside the stored classes, one
entry per task into the manifest: its classes, palette and `map` (stored code -> task class, 255 for
ignored). `data.task=NAME` picks one; every mask is relabelled through it as it is read, and every
count taken from the manifest (class pixels, empty classes) goes through the same map. Converting
once serves every task: no second copy of the frames on disk.

A dataset without tasks reads its stored classes, as before (`view(manifest, None)`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segframe.core.errors import ConfigError
from segframe.data.sample import IGNORE_INDEX

TASKS = "tasks"  # the manifest key


@dataclass(frozen=True)
class View:
    """What one task sees of a conversion: its classes and palette, and `lut` (uint8[256], stored code
    -> task class, 255 -> 255), None where the stored classes are the task's."""

    task: str | None
    classes: list[str]
    palette: list[list[int]]
    lut: np.ndarray | None = None

    def relabel(self, mask: np.ndarray) -> np.ndarray:
        """A decoded uint8 mask of stored codes -> the task's class ids (a table lookup)."""
        return mask if self.lut is None else self.lut[mask]

    def pixels(self, class_pixels: Sequence[int], ignore_pixels: int = 0) -> tuple[list[int], int]:
        """Per-class pixel counts of stored codes (a manifest's `class_pixels`) -> (the task's per-class
        counts, its ignored pixels: the stored ones plus codes this task maps to 255)."""
        if self.lut is None:
            return [int(p) for p in class_pixels], int(ignore_pixels)
        counts, ignored = [0] * len(self.classes), int(ignore_pixels)
        for code, n in enumerate(class_pixels):
            if self.lut[code] == IGNORE_INDEX:
                ignored += int(n)
            else:
                counts[int(self.lut[code])] += int(n)
        return counts, ignored


def check_tasks(tasks: Mapping[str, Mapping[str, Any]], num_stored: int, dataset: str) -> dict[str, dict[str, Any]]:
    """A converter's tasks as the manifest stores them, refused (naming the task) when a map does not
    cover every stored code or names a class the task does not have."""
    out = {}
    for name, task in tasks.items():
        classes, palette, mapping = list(task["classes"]), [list(map(int, c)) for c in task["palette"]], list(task["map"])
        if len(mapping) != num_stored:
            raise ConfigError(f"{dataset}: task {name!r} maps {len(mapping)} stored codes; the conversion stores "
                              f"{num_stored}")
        bad = sorted({int(c) for c in mapping if not (0 <= int(c) < len(classes) or int(c) == IGNORE_INDEX)})
        if bad or len(palette) < len(classes):
            raise ConfigError(f"{dataset}: task {name!r} maps codes to {bad} outside its {len(classes)} classes, or "
                              f"has {len(palette)} colours for them")
        out[str(name)] = {"classes": classes, "palette": palette[:len(classes)], "map": [int(c) for c in mapping]}
    return out


def view(manifest: Mapping[str, Any], task: str | None) -> View:
    """The classes and relabelling `data.task` asks of this conversion. A conversion with tasks needs
    one named; one without takes none."""
    tasks = manifest.get(TASKS) or {}
    name = manifest.get("name")
    if task is None:
        if tasks:
            raise ConfigError(f"{name} serves several tasks from one conversion: choose one with data.task=NAME "
                              f"(one of {sorted(tasks)})")
        return View(None, list(manifest["classes"]), [list(c) for c in manifest.get("palette") or []])
    if task not in tasks:
        has = f"it was converted with tasks {sorted(tasks)}" if tasks else "its conversion has no tasks"
        raise ConfigError(f"data.task={task!r}: {has}")
    entry = tasks[task]
    lut = np.arange(256, dtype=np.uint8)  # codes past the map (and 255) stay as they are: decode refused them
    lut[:len(entry["map"])] = entry["map"]
    return View(task, list(entry["classes"]), [list(c) for c in entry["palette"]], lut)


def empty_in(v: View, splits: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], int]:
    """(the task's classes with no labelled pixel in `splits`, the task's ignored pixels there), from
    the manifest's per-split counts."""
    counts = [v.pixels(info["class_pixels"], info["ignore_pixels"]) for info in splits.values()]
    totals = np.sum([c for c, _ in counts], axis=0)
    return [v.classes[i] for i in np.flatnonzero(totals == 0)], sum(i for _, i in counts)
