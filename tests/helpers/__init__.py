"""Helpers shared by the test files: plain functions and constants, no fixtures (those are in
tests/conftest.py).

`tests/` is on sys.path while pytest runs (pyproject.toml: `pythonpath = ["tests"]`), so a test
file imports them as `from helpers.cli import run_cli`, whatever the import mode.

- helpers.cli: REPO, run_cli (a segframe command in a subprocess) and ok (assert it exited 0; its output)
- helpers.config: compose (a Hydra config without running it) and the tiny training overrides
- helpers.datasets: images in memory or on disk, raw dataset trees in their real layouts (VOC, SBD,
  Kvasir-SEG) and reading converted shards back (raw_samples, read_split)
- helpers.quick: the quick tier's rule (`pytest -m quick`), applied by tests/conftest.py
"""
