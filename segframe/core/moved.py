"""Where the modules that checkpoints name went when segframe's folders became its layers (release
0.2). A checkpoint names its loss, scheduler and model classes by import path (`_target_`); one
written before the move names `segframe.losses.Focal` where the class is now
`segframe.engine.losses.Focal`. Files are read through `current_targets`, never rewritten."""

from __future__ import annotations

from typing import Any

# old module -> its module now; only the modules a `_target_` could name (components of a config)
MOVED = {
    "segframe.losses": "segframe.engine.losses",
    "segframe.jaccard_loss": "segframe.engine.jaccard_loss",
    "segframe.schedules": "segframe.engine.schedules",
    "segframe.module": "segframe.engine.module",
    "segframe.trackers": "segframe.engine.trackers",
    "segframe.checkpointing": "segframe.engine.checkpointing",
    "segframe.progress_bar": "segframe.engine.progress_bar",
    "segframe.sweep": "segframe.experiments.sweep",
    "segframe.crf": "segframe.evaluation.crf",
    "segframe.inference": "segframe.evaluation.inference",
    "segframe.metrics": "segframe.evaluation.metrics",
}


def current_target(target: str) -> str:
    """`target` (a dotted class or function path) as it is named now."""
    for old, new in MOVED.items():
        if target == old or target.startswith(old + "."):
            return new + target[len(old):]
    return target


def current_targets(node: Any) -> Any:
    """A copy of a plain config (dicts, lists) with every `_target_` named as it is now."""
    if isinstance(node, dict):
        return {k: current_target(v) if k == "_target_" and isinstance(v, str) else current_targets(v)
                for k, v in node.items()}
    if isinstance(node, list):
        return [current_targets(v) for v in node]
    return node


def current_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's whole config (config.yaml, a checkpoint's `run_config`) as one written now would say
    it, for comparing runs of before and after 0.2: `_target_`s by their current paths, and the
    model's network under its one name, `model.backbone` (smp runs before 0.2 said only
    `model.encoder`; runs since keep `encoder: null` beside it). Two different values stay as they are."""
    config = current_targets(config)
    model = config.get("model")
    if not isinstance(model, dict) or "encoder" not in model:
        return config
    model = dict(model)
    if model.get("backbone") is None or model["encoder"] in (None, model["backbone"]):
        encoder = model.pop("encoder")
        if model.get("backbone") is None and encoder is not None:
            model["backbone"] = encoder
    return {**config, "model": model}
