"""Where the source checkout keeps its configs, and the OmegaConf resolvers configs use."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
EXPERIMENTS_DIR = REPO_ROOT / "experiments"


def register_resolvers() -> None:
    """`${repo_root:}` lets configs name checkout-relative paths that work from any cwd."""
    if not OmegaConf.has_resolver("repo_root"):
        OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT))
    # `${len:${data.classes}}`: a class count that cannot disagree with the class list
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda seq: len(seq))


register_resolvers()
