"""Where the source checkout keeps its configs, and the OmegaConf resolvers configs use."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"


def user_conf_dir() -> Path:
    """The configs segframe writes for the user (`<data_dir>/conf`, data_dir as `paths.data_dir` defaults
    to it: $SEGFRAME_DATA or <checkout>/data): `convert data=folder data.name=cells ...` describes the
    dataset there once, as data/cells.yaml. The entry points search it (`hydra.searchpath`), so
    `data=cells` works, without editing files inside the installed package."""
    return Path(os.environ.get("SEGFRAME_DATA") or REPO_ROOT / "data") / "conf"


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


register_resolvers()
