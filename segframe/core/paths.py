"""Where the source checkout keeps its configs, and the OmegaConf resolvers configs use."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from omegaconf import OmegaConf

from segframe.core.folds import fold_split
from segframe.core.task_choice import task_classes

REPO_ROOT = Path(__file__).resolve().parents[2]  # segframe/core/paths.py -> the checkout
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"


def user_conf_dir() -> Path:
    """The configs segframe writes for the user (`<data_dir>/conf`, data_dir as `paths.data_dir` defaults
    to it: $SEGFRAME_DATA or <checkout>/data): `convert data=folder data.name=cells ...` describes the
    dataset there once, as data/cells.yaml. The entry points search it (`hydra.searchpath`), so
    `data=cells` works, without editing files inside the installed package."""
    return Path(os.environ.get("SEGFRAME_DATA") or REPO_ROOT / "data") / "conf"


def user_datasets() -> str:
    """The `--help` line naming the datasets the converter described (<data_dir>/conf/data/*.yaml)."""
    folder = user_conf_dir() / "data"
    names = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
    line = (f"data, your own (in {folder}): {', '.join(names)}" if names else
            "data, your own: none yet (python -m segframe.convert data=folder data.name=NAME data.root=... "
            "\"data.classes=[...]\" describes one: docs/datasets.md, \"Your own data\")")
    return line.replace("$", "$$")  # Hydra fills the help page in with string.Template


def register_resolvers() -> None:
    """`${repo_root:}` lets configs name checkout-relative paths that work from any cwd."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    # `${len:${data.classes}}`: a class count that cannot disagree with the class list
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))
    # `hydra.searchpath: [file://${user_conf:}]`: read when Hydra composes, before command-line overrides
    if not OmegaConf.has_resolver("user_conf"):
        OmegaConf.register_new_resolver("user_conf", lambda: str(user_conf_dir()))
    # `train_split: ${fold_split:train,${data.fold},${data.num_folds},NAME}`: data.fold=K picks a fold's splits
    if not OmegaConf.has_resolver("fold_split"):
        OmegaConf.register_new_resolver("fold_split", fold_split)
    # `classes: ${task_classes:${data.task_classes},${data.task},NAME}`: data.task picks a task's classes
    if not OmegaConf.has_resolver("task_classes"):
        OmegaConf.register_new_resolver("task_classes", task_classes)
    # `backbone: ${alias:${.encoder},resnet34}`: a key's other name (model.encoder for model.backbone) when
    # that is set, else the default; the component refuses the two set to different values
    if not OmegaConf.has_resolver("alias"):
        OmegaConf.register_new_resolver("alias", lambda other, default: default if other is None else other)
    # `--help` (conf/hydra/help/segframe.yaml): the user's own datasets beside the shipped ones
    if not OmegaConf.has_resolver("user_datasets"):
        OmegaConf.register_new_resolver("user_datasets", user_datasets)


def quiet_absent_user_conf() -> None:
    """Before the first `convert data=folder data.name=...`, <data_dir>/conf does not exist, and Hydra
    would warn on every command that this search path "is not available": nothing is wrong, so that one
    warning is not shown (any other search path's still is)."""
    warnings.filterwarnings("ignore", category=UserWarning, message=re.escape(
        f"provider=hydra.searchpath in main, path={user_conf_dir()} is not available"))


register_resolvers()
quiet_absent_user_conf()
