"""`python -m segframe.compare RUN_DIR... [per_class=true] [metric=miou] [output=DIR]`: runs side by side.

RUN_DIR: a run directory (outputs/DATE/TIME/), a sweep directory (multirun/DATE/TIME/: its
subfolders that are runs), or a glob of them ('outputs/2026-12-06/*', quoted or expanded by the
shell; files among the matches, such as a sweep's summary.md, are skipped). Prints a markdown table
with one column per run: the config keys that differ between the runs (hydra.* and resume are
ignored, and the printout says so), the summary metrics of their metrics.json, per-class IoU with
per_class=true, and the best run by `metric`. Writes compare.png, each run's validation curve of
`metric` (val/<metric> per epoch from its CSV log) overlaid and labelled by its differing keys, into
`output` (default: the current directory).
"""

from __future__ import annotations

import sys
from pathlib import Path

from segframe.core.cli import run
from segframe.core.errors import ConfigError
from segframe.experiments.comparison import compare

OPTIONS = ("per_class", "metric", "output")
BOOLEAN = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0 if args else 2
    options, runs = {}, []
    for a in args:  # `key=value` for compare's options, unless the argument is a path that exists
        key, _, value = a.partition("=")
        if key in OPTIONS and value and not Path(a).exists():
            options[key] = value
        else:
            runs.append(a)
    print(run(lambda: compare(runs, metric=options.get("metric", "miou"), per_class=flag(options, "per_class"),
                              output=Path(options.get("output", ".")))))
    return 0


def flag(options: dict[str, str], key: str) -> bool:
    value = BOOLEAN.get(options.get(key, "false").lower())
    if value is None:
        raise ConfigError(f"{key}={options[key]}: use {key}=true or {key}=false")
    return value


if __name__ == "__main__":
    sys.exit(main())
