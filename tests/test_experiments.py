"""The experiments library (segframe.experiments.library, segframe.experiments.tables) that reproduce and
results share, and the score formatting of segframe.core.metric_names."""

from __future__ import annotations

import json
import subprocess
import sys

from segframe.core.metric_names import SUMMARY_HEADERS, image_summary_keys, percent, summary_keys

from helpers.cli import REPO

EXPERIMENT = """reference:
  recipe: r
  data: d
  source: s
  mean: {miou: 60.0}
  tolerance: {miou: 1.0}
comparison: {model: 'FCN-8s'}
"""


def test_results_reads_the_results_reproduce_writes_under_segframe_experiments(tmp_path, monkeypatch):
    from segframe.experiments.library import experiments_dir, result_path, write_result
    from segframe.results import comparison_table, table

    monkeypatch.setenv("SEGFRAME_EXPERIMENTS", str(tmp_path))
    (tmp_path / "mine.yaml").write_text(EXPERIMENT)
    runs = [{"ok": True, "miou": 0.605, "mdice": 0.7}]
    written = write_result("mine", {"runs": runs, "wall_s": [10.0], "machine": {"device": "cpu"}, "date": "2026-01-01"})
    assert experiments_dir() == tmp_path and written == result_path("mine") == tmp_path / "results" / "mine.json"
    assert json.loads(written.read_text())["runs"] == runs
    rows = table().splitlines()[2:]
    assert len(rows) == 1 and rows[0].startswith("| `mine` |") and "within tolerance (miou ±1.0)" in rows[0]
    assert "**60.50** (60.50) | 70.00 |" in comparison_table()
    # the README's short table: the judged score reported and reproduced, and the verdict
    from segframe.results import summary_table
    assert summary_table().splitlines()[2:] == ["| `mine` | d | mIoU | 60.00 | 60.50 | within tolerance |"]


def test_results_and_reproduce_start_without_torch():
    code = ("import sys, segframe.results, segframe.reproduce; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pytorch_lightning', 'torchvision'}))")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


def test_percent_of_a_fraction_or_of_a_percent():
    assert percent(0.61234) == "61.23" and percent(None) == "n/a" and percent(float("nan")) == "n/a"
    assert percent(61.234, fraction=False, missing="-") == "61.23" and percent(None, fraction=False, missing="-") == "-"
    assert percent(5, fraction=False) == "5.00"
    assert all(k in SUMMARY_HEADERS for k in (*summary_keys(), *image_summary_keys()))
