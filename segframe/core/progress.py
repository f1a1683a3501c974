"""Progress of long loops, with an ETA, readable both in a terminal and in a log file.

In a terminal a loop shows a tqdm bar (its ETA is the `<remaining` time). When the bar's stream is not
a terminal (a CI log, `> log.txt`, a SLURM output file) a bar would be a wall of carriage returns, so
the loop logs a line instead at each tenth of the way (once it has run 5 s) and at least once a minute:
`voc_aug/train: 1060/10582 img (10%), 0:42 elapsed, ETA 6:18`, and how it ended: 11 lines and one a
minute at most, one line for a quick loop. The lines go to the `segframe` logger (the console, and the
run's log file under Hydra).

No torch or Lightning here: converters and `segframe.reproduce` use it (segframe.engine.progress_bar is the
Lightning side).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

log = logging.getLogger("segframe")


def is_terminal(stream: IO[str] | None) -> bool:
    """Whether `stream` is an interactive terminal (False for a file, a pipe, a closed or missing stream)."""
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def clock(seconds: float) -> str:
    """`0:42`, `12:03`, `1:02:03`: a duration as a clock reads."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Eta:
    """How far a loop of `total` items is: `done` of them since the clock started (after `skipped` that
    were done before it, e.g. by an earlier process), the time elapsed and the time left at the rate so far."""

    def __init__(self, total: float | None, skipped: int = 0):
        self.total, self.skipped, self.start = total, skipped, time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self, done: int) -> float | None:
        """Seconds left at the rate so far; None before the first item or when the total is unknown."""
        timed = done - self.skipped
        if timed <= 0 or self.total is None or not math.isfinite(self.total):
            return None
        return self.elapsed() / timed * max(0.0, self.total - done)

    def text(self, done: int, unit: str = "") -> str:
        """`160/1464 img (10%), 0:12 elapsed, ETA 1:48` (no total: `160 img, 0:12 elapsed`)."""
        unit = f" {unit}" if unit else ""
        known = self.total is not None and math.isfinite(self.total) and self.total > 0
        count = f"{done}/{int(self.total)}{unit} ({100 * done / self.total:.0f}%)" if known else f"{done}{unit}"
        left = self.left(done) if not known or done < self.total else None  # (none left: no ETA)
        return f"{count}, {clock(self.elapsed())} elapsed" + (f", ETA {clock(left)}" if left is not None else "")


def track(items: Iterable[T], total: int | None, desc: str, unit: str = "it", stream: IO[str] | None = None,
          every_s: float = 60.0, quiet_s: float = 5.0, say: Callable[[str], Any] = log.info) -> Iterator[T]:
    """`items`, with progress on `stream` (stderr by default): tqdm's bar in a terminal, else lines
    through `say`: at each tenth of `total` once the loop has run `quiet_s` seconds (a quick loop says
    only how it ended), at least every `every_s` seconds, and at the end."""
    stream = stream if stream is not None else sys.stderr
    if is_terminal(stream):
        yield from tqdm(items, total=total, desc=desc, unit=unit, file=stream)
        return
    eta, done, said, last = Eta(total), 0, 0, time.monotonic()
    for item in items:
        yield item
        done += 1
        tenth = bool(total) and int(10 * done / total) > int(10 * said / total) and eta.elapsed() >= quiet_s
        if (tenth and done != total) or time.monotonic() - last >= every_s:
            said, last = done, time.monotonic()
            say(f"{desc}: {eta.text(done, unit)}")
    say(f"{desc}: {eta.text(done, unit)}")
