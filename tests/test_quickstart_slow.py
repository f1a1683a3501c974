"""The README's main job (its first command), exactly as a newcomer runs it, against the numbers it records."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from helpers.cli import REPO, run_cli


@pytest.mark.slow
def test_quickstart_reaches_its_recorded_miou(tmp_path):
    res = run_cli("train", "experiment=quickstart", f"paths.data_dir={tmp_path / 'data'}",
                  f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-5000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    reference = OmegaConf.load(REPO / "experiments" / "quickstart.yaml").reference
    miou = 100 * metrics["miou"]
    assert abs(miou - reference.mean.miou) <= reference.tolerance.miou, (miou, reference.mean.miou)
    assert miou >= 65.0, miou  # the floor for the first run (target 75 was out of reach: docs/reproducing.md)
    assert metrics["steps"] == 16 * 37 and metrics["model_parameters"] > 11_000_000
    for name in ("per_class.md", "confusion_matrix.png", "predictions.png", "checkpoints/last.ckpt"):
        assert (tmp_path / "run" / name).is_file()
