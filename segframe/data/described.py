"""A dataset described once. `python -m segframe.convert data=folder data.name=cells data.root=...
"data.classes=[...]" ...` converts it, then writes what its command line said as
`<data_dir>/conf/data/cells.yaml` (paths.user_conf_dir), a folder the entry points search: from then
on `python -m segframe.train data=cells` (eval, browse, convert again) needs no repeated overrides,
and nothing inside the installed package is edited.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segframe.core.atomic import write_text_atomic
from segframe.core.errors import ConfigError
from segframe.core.paths import CONF_DIR, user_conf_dir
from segframe.data.remote import is_remote

# the config's own links stay links: source.* -> ${data.*}, num_classes -> ${len:${data.classes}}
_LINKED = ("source", "num_classes")


def config_path(name: str) -> Path:
    return user_conf_dir() / "data" / f"{name}.yaml"


def is_described(name: str) -> bool:
    """Whether data=`name` composes a config this converter wrote (not one segframe ships)."""
    return config_path(name).is_file() and not (CONF_DIR / "data" / f"{name}.yaml").is_file()


def check_name(name: str) -> None:
    """The name a described dataset's config file takes: plain, and not a dataset segframe ships
    (the packaged config would be found first)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise ConfigError(f"data.name={name!r}: use letters, digits, '_' and '-' (it names the data config "
                          f"{config_path('NAME')} and the folder the shards go to)")
    if (CONF_DIR / "data" / f"{name}.yaml").is_file():
        raise ConfigError(f"data.name={name}: segframe ships a dataset of that name (conf/data/{name}.yaml); "
                          f"give yours another name, e.g. data.name=my_{name}")


def describe(data: DictConfig, command: str) -> Path:
    """Write `data` (as composed for `command`) to <user conf>/data/<name>.yaml; returns its path.
    Values that point outside the data node (paths.*, a relative root) are written resolved and
    absolute, so the file means the same whatever the command line or directory it is used from.
    Rewriting a file keeps the commands that wrote it before, in its header: together they say where
    each setting came from."""
    check_name(data.name)
    node = _written(data)
    path = config_path(data.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    earlier = [line for line in path.read_text().splitlines() if line.startswith("#   python -m segframe.")] \
        if path.is_file() else []
    header = (f"# Dataset {data.name}, described by segframe's converter on {datetime.now():%Y-%m-%d %H:%M} from:\n"
              + "".join(f"{line}\n" for line in earlier) +
              f"#   {command}\n# Use it as data={data.name}; edit it here, then convert again with "
              f"`python -m segframe.convert data={data.name} overwrite=true`.\n")
    write_text_atomic(path, header + OmegaConf.to_yaml(OmegaConf.create(node)))
    return path


def _written(data: DictConfig) -> dict[str, Any]:
    """The data node as its config file holds it: links kept, everything else resolved, local paths absolute."""
    node: dict[str, Any] = OmegaConf.to_container(data, resolve=False)  # type: ignore[assignment]
    resolved: dict[str, Any] = OmegaConf.to_container(data, resolve=True)  # type: ignore[assignment]
    for key in node:
        if key not in _LINKED:
            node[key] = resolved[key]
    for key in ("root", "shard_dir"):
        if isinstance(node.get(key), str) and not is_remote(node[key]):
            node[key] = str(Path(node[key]).expanduser().absolute())
    node["auto_convert"] = False
    return node


def changes(data: DictConfig) -> list[str]:
    """What describing `data` again would change in its config file, as `key: was -> now`; empty when
    nothing would (the command line gave no data.* setting that differs)."""
    was = OmegaConf.to_container(OmegaConf.load(config_path(data.name)), resolve=False)
    now = _written(data)
    assert isinstance(was, dict)
    return [f"{key}: {was.get(key)!r} -> {now[key]!r}" for key in now
            if key not in _LINKED and _plain(was.get(key)) != _plain(now[key])]


def _plain(value: Any) -> Any:
    """A setting compared as YAML holds it: mapping keys as strings ({255: 1} == {'255': 1})."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
