"""The run's components come from their own config nodes: extra Lightning callbacks from
`callbacks:`, test-time options from `eval`."""

from __future__ import annotations

from helpers.config import compose

from segframe.engine import components

from segframe.evaluation import crf


def _names(callbacks) -> list[str]:
    return [type(c).__name__ for c in callbacks]


def test_callbacks_come_from_the_config_and_the_lr_monitor_only_with_a_logger():
    cfg = compose(["data=shapes"])
    assert _names(components.callbacks(cfg.callbacks, logging=True)) == ["LearningRateMonitor"]
    assert components.callbacks(cfg.callbacks, logging=False) == []  # Lightning refuses it without a logger
    changed = compose(["data=shapes", "callbacks.lr_monitor=null",
                       "+callbacks.stop={_target_: pytorch_lightning.callbacks.EarlyStopping, monitor: val/miou, "
                       "mode: max, patience: 3}"])
    [stop] = components.callbacks(changed.callbacks, logging=True)
    assert type(stop).__name__ == "EarlyStopping" and stop.patience == 3 and stop.monitor == "val/miou"


def test_inference_options_are_the_eval_nodes_test_time_keys_as_plain_values():
    options = components.inference_options(compose(["data=shapes", "eval.scales=[0.5,1.0]", "eval.flip=true"]).eval)
    assert options == {"scales": [0.5, 1.0], "flip": True, "mode": "whole", "crop": 512, "stride": 341, "crf": False,
                       **crf.DEFAULTS}
    assert type(options["scales"]) is list  # plain, not an OmegaConf ListConfig: checkpoints hold it
