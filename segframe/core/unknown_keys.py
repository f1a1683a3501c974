"""A command-line key the composed config does not have (`trainer.max_epoch=1`): Hydra refuses it and
advises `+trainer.max_epoch=1`, which adds the typo and fails later, inside the component. Here the
refusal says what was probably meant, from the composed config's own keys (and, for a component, the
arguments its `_target_` takes), and advises `+` only for a real argument that the config leaves unset.
"""

from __future__ import annotations

import difflib
import inspect
import sys
from pathlib import Path

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.types import Override
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf

_REFUSED = "Could not override '"


def _arguments(target: str) -> list[str]:
    """The keyword arguments the class or function `target` takes (none when it cannot be imported)."""
    from hydra.utils import get_object

    try:
        params = inspect.signature(get_object(target)).parameters.values()
    except Exception:  # noqa: BLE001 (an advice must never fail the command itself)
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def advice(cfg: DictConfig, key: str, value: str) -> str:
    """Why `key=value` was refused, and what to type instead."""
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        close = difflib.get_close_matches(parent_key, _all_keys(cfg), n=2, cutoff=0.6)
        return (f"{key}={value}: this config has no {parent_key}"
                + (f"; did you mean {' or '.join(f'{c}.{name}={value}' for c in close)}?" if close else "")
                + f" (`{_command()} --cfg job` prints every key)")
    where = f"{parent_key}." if parent_key else ""
    keys = [str(k) for k in parent.keys() if str(k) not in ("_target_", "hydra")]
    target = parent.get("_target_") if parent_key else None
    arguments = _arguments(str(target)) if target else []
    if name in arguments:  # a real argument the config leaves at the component's default
        return (f"{key}={value}: {target} takes `{name}`, but this config does not set it; add it with "
                f"+{key}={value}")
    close = difflib.get_close_matches(name, sorted(set(keys) | set(arguments)), n=2, cutoff=0.6)
    what = f"{parent_key} ({target}) has no argument" if target else \
        (f"{parent_key} has no key" if parent_key else "this config has no key")
    guess = f"; did you mean {' or '.join(f'{where}{c}={value}' for c in close)}?" if close else \
        f"; its keys: {', '.join(keys[:40])}{' ...' if len(keys) > 40 else ''}"
    return f"{key}={value}: {what} `{name}`{guess}"


def _command() -> str:
    """This command, as typed (`python -m segframe.train`)."""
    return f"python -m segframe.{Path(sys.argv[0]).stem}" if sys.argv and sys.argv[0] else "python -m segframe.train"


def _all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every mapping node's dotted key (where a misspelt parent may have been meant)."""
    found = []
    for k, v in cfg.items_ex(resolve=False):
        if isinstance(v, DictConfig) and str(k) != "hydra":
            found.append(f"{prefix}{k}")
            found += _all_keys(v, f"{prefix}{k}.")
    return found


def install() -> None:
    """Make Hydra's refusal of an unknown key carry `advice` (once per process)."""
    original = getattr(ConfigLoaderImpl, "_apply_overrides_to_config", None)
    if original is None or getattr(original, "segframe_advice", False):  # another Hydra: its own message stays
        return

    def apply(overrides: list[Override], cfg: DictConfig) -> None:
        try:
            original(overrides, cfg)
        except ConfigCompositionException as exc:
            text = str(exc)
            refused = next((o for o in overrides if text.startswith(f"{_REFUSED}{o.key_or_group}'")), None)
            if refused is None or refused.input_line is None:
                raise
            value = refused.input_line.split("=", 1)[1] if "=" in refused.input_line else ""
            try:
                text = advice(cfg, refused.key_or_group, value)
            except Exception:  # noqa: BLE001 (an advice that fails leaves Hydra's own message)
                raise exc  # noqa: B904 (Hydra's error as it was, its cause included)
            # from None: Hydra would print OmegaConf's "Key 'max_epoch' is not in struct" below it
            raise ConfigCompositionException(text) from None

    apply.segframe_advice = True  # type: ignore[attr-defined]
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(apply)  # type: ignore[method-assign]
