"""The test-time `eval` block is one config group, conf/eval/default.yaml (issue 27), that train, eval
and predict take through their defaults lists: the same `eval.*` override paths, and each command's
composed `eval` node as it was when each had its own copy of the block."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers.config import compose
from segframe.core.paths import CONF_DIR

# the `eval` node each command composed before the block became conf/eval/default.yaml
TEST_TIME = {"scales": [1.0], "flip": False, "mode": "whole", "crop": 512, "stride": 341, "crf": False,
             "crf_iterations": 5, "crf_gaussian_sxy": 3, "crf_gaussian_compat": 3, "crf_bilateral_sxy": 80,
             "crf_bilateral_srgb": 13, "crf_bilateral_compat": 10}
BEFORE = {"train": {"split": "${data.val_split}", **TEST_TIME}, "eval": {"split": "${split}", **TEST_TIME},
          "predict": TEST_TIME}


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_the_eval_block_is_one_group_with_the_same_keys(command):
    cfg = compose([], name=command)
    node = OmegaConf.to_container(cfg.eval, resolve=False)
    assert node == BEFORE[command] and list(node) == list(BEFORE[command])  # the same keys, in the same order
    assert "eval: default" in (CONF_DIR / f"{command}.yaml").read_text()
    changed = compose(["eval.scales=[0.75,1,1.25]", "eval.flip=true", "eval.mode=slide"], name=command).eval
    assert list(changed.scales) == [0.75, 1, 1.25] and changed.flip is True and changed.mode == "slide"



def test_the_group_beside_conf_eval_yaml_works_from_the_command_line():
    """conf/eval/ (the group) sits beside conf/eval.yaml (segframe.eval's primary config)."""
    from helpers.cli import run_cli

    res = run_cli("eval", "--cfg", "job", "eval.scales=[0.75,1,1.25]", "split=test")
    assert res.returncode == 0, res.stderr[-2000:]
    node = OmegaConf.create(res.stdout).eval
    assert node.split == "test" and list(node.scales) == [0.75, 1, 1.25] and node.crf_iterations == 5
