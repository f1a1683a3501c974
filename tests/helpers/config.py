"""Composing segframe's Hydra configs in the test process, and the override lists that size a
training run for a test.

TINY is the one base list: a few steps of a small FCN on a small `shapes` dataset. A test that
needs something else derives its list with `tiny(...)`, which names every change: the overrides it
adds or replaces and the keys it drops.
"""

from __future__ import annotations

from collections.abc import Iterable


def compose(overrides: list[str], name: str = "train", return_hydra_config: bool = False):
    """The composed Hydra config of `python -m segframe.<name> overrides...`, without running it
    (with the `hydra` node too when `return_hydra_config`)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from segframe.core.paths import CONF_DIR  # importing it registers the ${repo_root:} / ${user_conf:} resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=overrides, return_hydra_config=return_hydra_config)


def key(override: str) -> str:
    """The config key an override sets: `optimizer` for `optimizer=adamw`, `a.b` for `+a.b=1`."""
    return override.split("=", 1)[0].lstrip("+~")


def _under(override: str, keys: Iterable[str]) -> bool:
    k = key(override)
    return any(k == prefix or k.startswith(f"{prefix}.") for prefix in keys)


def only(overrides: list[str], *keys: str) -> list[str]:
    """The overrides of `overrides` that set one of `keys` or something under it, in their order."""
    return [o for o in overrides if _under(o, keys)]


def tiny(*changes: str, drop: Iterable[str] = (), base: list[str] | None = None) -> list[str]:
    """`base` (TINY by default) with `changes`: an override for a key the base sets replaces it where
    it stands, one for a new key is appended; `drop` removes the base's overrides of those keys and
    of everything under them (`optimizer` drops `optimizer=...` and `optimizer.lr=...`)."""
    base = TINY if base is None else base
    drop = tuple(drop)
    changed = {key(c): c for c in changes}
    assert len(changed) == len(changes), f"a key changed twice: {changes}"
    assert not [k for k in changed if _under(k, drop)], f"changed and dropped: {changes}, drop={drop}"
    assert all(only(base, k) for k in drop), f"nothing to drop for one of {drop} in {base}"
    kept = [changed.pop(key(o), o) for o in base if not _under(o, drop)]
    return kept + [c for c in changes if key(c) in changed]


# A few steps of a small FCN on a small `shapes` dataset (16 train, 6 val images of 48x48), converted
# on first use; 16 / 4 gives 4 steps an epoch and no batch of 1. fp32 NCHW, not the `auto` speed
# knobs: the same arithmetic on every machine (tests/test_speed.py tests auto).
TINY = [
    "trainer.precision=32-true", "module.channels_last=false",
    "model.backbone=resnet18", "model.pretrained=false", "data.source.num_train=16", "data.source.num_val=6",
    "data.source.size=48", "data.crop_size=48", "data.shard_size=8", "datamodule.batch_size=4",
    "datamodule.eval_batch_size=4", "datamodule.num_workers=0", "optimizer=adamw", "optimizer.lr=0.003",
    "report.num_images=4", "trainer.log_every_n_steps=1",
]

# The `tiny_shapes` fixture's converter settings (tests/conftest.py converts it with these, shard_size=6).
TINY_SHAPES_SOURCE = {"num_train": 24, "num_val": 10, "size": 48}

# Training on the `tiny_shapes` fixture (data.shard_dir=<it>): its converter settings, since training
# refuses shards converted otherwise; the optimizer's defaults; nothing written or shown that the
# tests do not read.
TINY_ON_TINY_SHAPES = tiny(
    *(f"data.source.{k}={v}" for k, v in TINY_SHAPES_SOURCE.items()),
    "report.num_images=0", "logger=none", "trainer.enable_progress_bar=false",
    drop=("data.shard_size", "optimizer", "trainer.log_every_n_steps"),
)

# DDP with 2 gloo processes on the CPU. 14 train samples in 3 shards (6, 6, 2) for 2 ranks x 2 workers:
# fewer shards than consumers and uneven shard sizes, the case where a naive split leaves one rank
# without batches and DDP hangs.
DDP = [
    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "model.backbone=resnet18",
    "model.pretrained=false", "data.source.num_train=14", "data.source.num_val=7", "data.source.size=40",
    "data.crop_size=40", "data.shard_size=6", "datamodule.batch_size=3", "datamodule.eval_batch_size=2",
    "datamodule.num_workers=2", "optimizer=adamw", "optimizer.lr=0.003", "report.num_images=2",
    "trainer.log_every_n_steps=1",
]
