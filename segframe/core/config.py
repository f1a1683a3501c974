"""What every entry point does with the composed config before any work: refuse keys the primary
config does not define, hand components plain containers, and one error type for a config that
cannot work."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from segframe.core.errors import ConfigError
from segframe.core.paths import CONF_DIR

__all__ = ["ConfigError", "check_keys", "plain"]


def plain(cfg: DictConfig) -> Any:
    """Resolved plain containers: what checkpoints and JSON may hold (never OmegaConf objects)."""
    return OmegaConf.to_container(cfg, resolve=True)


def check_keys(cfg: DictConfig, primary: str) -> None:
    """Reject top-level keys the primary config does not define (`+typo=1` bypasses struct mode)."""
    base = OmegaConf.load(CONF_DIR / f"{primary}.yaml")
    known = {k for k in base if k not in ("defaults", "hydra")}
    for entry in base.get("defaults", []):
        if isinstance(entry, (dict, DictConfig)):
            known.update(str(k).lstrip("+~").split("@")[0] for k in entry)
    unknown = sorted(set(cfg) - known - {"hydra"})
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for `python -m segframe.{primary}`; known top-level keys: "
            f"{sorted(known)}. Check the spelling; `--cfg job` prints the composed config."
        )


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested plain config as dotted keys ({"optimizer.lr": 0.01, ...}): a list stays one value, and
    so does an empty mapping ({}). The one flattening of resume, the trackers and compare."""
    if not isinstance(node, dict) or not node:
        return {prefix: node} if prefix else {}
    return {k: v for key, value in node.items()
            for k, v in flatten(value, f"{prefix}.{key}" if prefix else str(key)).items()}
