"""`data.task` in a dataset config: `classes: ${task_classes:${data.task_classes},${data.task},NAME}`
resolves to the chosen task's class list, and a task the dataset does not have is refused naming
the ones it has (instead of Hydra's missing-interpolation-key message)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from segframe.core.errors import ConfigError


def task_classes(tasks: Mapping[str, Sequence[str]], task: str | None, dataset: str) -> list[str]:
    """The classes of `task` among `tasks` (task name -> class list) of `dataset`."""
    if task not in tasks:
        raise ConfigError(f"data.task={task!r}: {dataset} has the tasks {', '.join(tasks)}; "
                          f"pass one, e.g. data.task={next(iter(tasks))}")
    return list(tasks[task])
