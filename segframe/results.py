"""`python -m segframe.results [--check]`: the README's results table and model comparison,
generated from the experiment files (what each reports) and their results/*.json (what
`segframe.reproduce` measured). Never typed by hand: `--check` exits 1 when the README differs
from what this makes. The experiments are read where reproduce writes them (experiments_dir()):
the checkout's experiments/, or $SEGFRAME_EXPERIMENTS when set, whose tables then go into the
checkout's README.md.
"""

from __future__ import annotations

import sys

from segframe.core.paths import REPO_ROOT

# row, table, comparison_table and render: the library's, importable from here as before
from segframe.experiments.tables import comparison_table, render, render_all, row, table

__all__ = ["comparison_table", "main", "render", "row", "table"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    readme_path = REPO_ROOT / "README.md"
    readme = readme_path.read_text()
    updated = render_all(readme)
    if "--check" in args:
        if updated != readme:
            print("README.md's results tables are out of date: run `python -m segframe.results`", file=sys.stderr)
            return 1
        print("README.md's results tables are up to date")
        return 0
    readme_path.write_text(updated)
    print(f"updated the results tables in {readme_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
