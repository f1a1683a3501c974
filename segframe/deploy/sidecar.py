"""The sidecar `<graph>.json` beside an exported graph: where it lies, reading and checking it, the
graph file it vouches for (size and sha256, recorded at export), and the export command that makes
the pair again, from the checkpoint the sidecar names and with the options it records.

`python -m segframe.export` renames the graph into place first and its sidecar last, so the sidecar
is the mark of a finished export: a graph whose sidecar records another graph's hash, or that has
none, is refused on load (an export that stopped in between leaves `.<graph>.json.partial`, which
the refusal names).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from segframe.core.errors import ExportError
from segframe.data.manifest import sha256_file

FORMAT, FORMAT_VERSION = "segframe-export", 1
ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")
GRAPH_SUFFIXES = ONNX_SUFFIXES + TORCHSCRIPT_SUFFIXES
REQUIRED_KEYS = ("graph", "input", "outputs", "classes", "palette", "num_classes")
TORCHSCRIPT_OPSET = 17  # the opset the TorchScript-based ONNX exporter writes unless export.opset says
PARITY_DEFAULTS = {"tolerance": 1e-4, "min_agreement": 0.9999}  # conf/export.yaml's
WHERE_CHECKPOINTS = ("the .ckpt it was exported from; `python -m segframe.train` writes outputs/DATE/TIME/"
                     "checkpoints/evaluated.ckpt, best-*.ckpt and last.ckpt, and the run's MODEL_CARD.md names its own")
_PLAIN = re.compile(r"[\w./-]*\Z")  # what a Hydra override value may hold unquoted


def is_exported(path: str | Path) -> bool:
    """Whether `path` names an exported graph (by its suffix) rather than a Lightning checkpoint."""
    return Path(path).suffix.lower() in GRAPH_SUFFIXES


def graph_kind(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    raise ExportError(f"{path}: not an exported graph (suffixes: {', '.join(GRAPH_SUFFIXES)})")


def sidecar_path(graph: str | Path) -> Path:
    """The sidecar JSON of an exported graph: `<graph>.json` (model.onnx -> model.onnx.json)."""
    graph = Path(graph)
    return graph.with_name(graph.name + ".json")


def partial_sidecar_path(graph: str | Path) -> Path:
    """Where an export writes the sidecar before renaming it to `<graph>.json`, the last step."""
    graph = Path(graph)
    return graph.with_name(f".{graph.name}.json.partial")


def json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when there is none to be read."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _word(key: str, value: Any) -> str:
    """`key=value` as one shell word that Hydra reads back as `value` (quoted where it must be)."""
    text = str(value)
    if _PLAIN.match(text):
        return f"{key}={text}"
    word = f"{key}='" + text.replace("'", "\\'") + "'"
    return f'"{word}"' if not re.search(r'[$`"\\!]', text) else shlex.quote(word)


def _options(side: dict[str, Any], fmt: str) -> list[str]:
    """The export.* overrides that made the graph of `side`, where they are not the defaults."""
    words = []
    if side.get("outputs") == "labels":
        words.append("export.outputs=labels")
    if (side.get("input") or {}).get("dtype") == "uint8":
        words.append("export.input=uint8")
    if fmt == "onnx" and side.get("exporter") == "torchscript":  # `auto` would try dynamo first
        words.append("export.exporter=torchscript")
        if isinstance(side.get("opset"), int) and side["opset"] != TORCHSCRIPT_OPSET:
            words.append(f"export.opset={side['opset']}")
    parity = side.get("parity") if isinstance(side.get("parity"), dict) else {}
    for key, default in PARITY_DEFAULTS.items():
        if isinstance(parity.get(key), (int, float)) and float(parity[key]) != default:
            words.append(f"export.{key}={parity[key]:g}")
    return words


def export_command(graph: str | Path, sidecar: dict[str, Any] | None = None) -> str:
    """The command that (re)writes `graph` and its sidecar, to paste as it is: from the checkpoint
    the sidecar names (`sidecar`, else `<graph>.json` where it can be read, else the `.partial` one an
    export that stopped left) with the format and the options it records. With no sidecar to say, the
    checkpoint of the same name beside the graph (where export puts a graph by default), else
    `ckpt=CHECKPOINT` and where to find one."""
    graph = Path(graph)
    side = sidecar if isinstance(sidecar, dict) else json_object(sidecar_path(graph))
    side = side if sidecar is not None or side.get("format") == FORMAT else {}  # another tool's JSON says nothing
    if not side:  # an export that stopped before its sidecar: the one it was writing names the checkpoint
        partial = json_object(partial_sidecar_path(graph))
        side = partial if partial.get("format") == FORMAT else {}
    fmt = graph_kind(graph) if is_exported(graph) else "onnx"
    named = side.get("checkpoint") if isinstance(side.get("checkpoint"), str) and side.get("checkpoint") else None
    beside = graph.with_suffix(".ckpt")
    ckpt = named or (str(beside.resolve()) if beside.is_file() else None)
    words = [_word("ckpt", ckpt or "CHECKPOINT"), _word("format", fmt), _word("output", graph)] + _options(side, fmt)
    command = "python -m segframe.export " + " ".join(words)
    if ckpt is None:
        return f"{command} (CHECKPOINT: {WHERE_CHECKPOINTS})"
    if not named:
        return f"{command} (the checkpoint of that name beside it, where export puts its graph by default: no sidecar " \
               "names the graph's own)"
    if not Path(ckpt).is_file():
        return f"{command} (the sidecar's checkpoint, which is no longer at {ckpt}: set ckpt= to where it is now)"
    return command


def interrupted(graph: str | Path) -> dict[str, Any] | None:
    """The sidecar an export was writing for `graph` when it stopped between renaming the graph into
    place and renaming its sidecar (`.<graph>.json.partial`, when it records this very graph)."""
    side = json_object(partial_sidecar_path(graph))
    recorded = side.get("graph_sha256")
    if not recorded or side.get("graph_bytes") not in (None, Path(graph).stat().st_size):
        return None
    return side if sha256_file(graph) == recorded else None


def stopped_export(graph: str | Path, side: dict[str, Any]) -> str:
    """Why `graph` has no sidecar of its own when an export stopped before writing it, and the fix."""
    return (f"an export to {graph} stopped after writing the graph and before its sidecar (the sidecar it was "
            f"writing is left in {partial_sidecar_path(graph)}); export it again: {export_command(graph, side)}")


def graph_differs(graph: str | Path, side: dict[str, Any]) -> str | None:
    """How the file `graph` differs from the one the sidecar `side` was written for: its size (free
    to check) and else its sha256 (one read of the file: 0.6 s for 500 MB). None when it is that
    graph, or when the sidecar records no hash (written before segframe recorded it)."""
    recorded, size = side.get("graph_sha256"), Path(graph).stat().st_size
    if not recorded:
        return None
    if isinstance(side.get("graph_bytes"), int) and side["graph_bytes"] != size:
        return (f"the graph is {size} bytes but the sidecar was written for a graph of {side['graph_bytes']} bytes "
                f"(an incomplete copy, or another graph)")
    actual = sha256_file(graph)
    if actual != recorded:
        return (f"the graph's sha256 is {actual[:12]}... but the sidecar was written for a graph with "
                f"{recorded[:12]}... (the graph was replaced, or exported again without this sidecar)")
    return None


def read_sidecar(graph: str | Path) -> dict[str, Any]:
    """The checked sidecar of `graph`; a missing, unreadable or foreign one raises ExportError."""
    path = sidecar_path(graph)
    if not path.is_file():
        stopped = interrupted(graph) if Path(graph).is_file() else None
        if stopped:
            raise ExportError(f"{graph} has no sidecar {path}: {stopped_export(graph, stopped)}")
        raise ExportError(f"{graph} has no sidecar {path} (classes, palette, input and output format); "
                          f"re-export it: {export_command(graph)}")
    try:
        side = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"sidecar {path} of {graph} cannot be read ({type(exc).__name__}: {exc}); "
                          f"re-export it: {export_command(graph, {})}") from exc
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        raise ExportError(f"{path} is not a segframe export sidecar (format != {FORMAT!r}); "
                          f"re-export it: {export_command(graph, {})}")
    fix = f"re-export it: {export_command(graph, side)}"
    if side.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{path} has format_version {side.get('format_version')!r}; this segframe reads "
                          f"{FORMAT_VERSION}; {fix}")
    missing = [k for k in REQUIRED_KEYS if k not in side]
    if missing:
        raise ExportError(f"{path} lacks the key(s) {missing}; {fix}")
    problems = []
    if side["outputs"] not in ("logits", "labels"):
        problems.append(f"outputs={side['outputs']!r} (logits or labels)")
    if not isinstance(side["input"], dict) or side["input"].get("dtype") not in ("float32", "uint8"):
        problems.append(f"input={side['input']!r} (dtype float32 or uint8)")
    if not (isinstance(side["classes"], list) and isinstance(side["palette"], list)
            and isinstance(side["num_classes"], int) and len(side["classes"]) == side["num_classes"]
            and len(side["palette"]) >= side["num_classes"]):
        problems.append(f"num_classes={side['num_classes']!r} does not fit classes={side['classes']!r} and "
                        f"palette={side['palette']!r}")
    if side["graph"] != graph_kind(graph):
        problems.append(f"graph={side['graph']!r} but {Path(graph).name} is {graph_kind(graph)}")
    if problems:
        raise ExportError(f"{path}: {'; '.join(problems)}; {fix}")
    return side
