"""`python -m segframe.results [--check]`: the results tables, generated from the experiment files
(what each reports) and their results/*.json (what `segframe.reproduce` measured): the full results
table and the model comparison in docs/reproducing.md, and the short results table in README.md.
Never typed by hand: `--check` exits 1 when either file differs from what this makes. The
experiments are read where reproduce writes them (experiments_dir()): the checkout's experiments/,
or $SEGFRAME_EXPERIMENTS when set, whose tables then go into the checkout's docs and README.
"""

from __future__ import annotations

import sys

from segframe.core.paths import REPO_ROOT

# row, table, comparison_table and render: the library's, importable from here as before
from segframe.experiments.tables import TABLES, comparison_table, render, render_all, row, summary_table, table

__all__ = ["comparison_table", "main", "render", "row", "summary_table", "table"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stale = []
    for name in TABLES:  # docs/reproducing.md, README.md
        path = REPO_ROOT / name
        text = path.read_text()
        updated = render_all(text, file=name)
        if updated == text:
            continue
        stale.append(name)
        if "--check" not in args:
            path.write_text(updated)
            print(f"updated the results tables in {path}")
    if "--check" in args:
        if stale:
            print(f"{' and '.join(stale)}: results tables out of date: run `python -m segframe.results`",
                  file=sys.stderr)
            return 1
        print(f"the results tables in {' and '.join(TABLES)} are up to date")
        return 0
    if not stale:
        print(f"the results tables in {' and '.join(TABLES)} were already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
