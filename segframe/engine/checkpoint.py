"""A checkpoint written by `segframe.train`, read back: checked, loaded without unpickling code, and
turned into the trained module and the dataset it was trained on. (When and how training writes
checkpoints is checkpointing.py's job.)"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from segframe.core.errors import CheckpointError, MissingFileError, load_problem
from segframe.core.moved import current_targets
from segframe.engine.module import SegModule


def load_checkpoint(path: str, command: str | None = None) -> dict[str, Any]:
    """A Lightning checkpoint written by `segframe.train`, loaded without unpickling code. `command`
    (e.g. "eval"): the segframe command that needs it, for the advice when `path` is something else."""
    if not Path(path).is_file():
        raise MissingFileError(f"checkpoint {path} does not exist (ckpt=PATH, e.g. outputs/DATE/TIME/checkpoints/last.ckpt)")
    graph = exported_graph_kind(path)
    if graph:
        raise CheckpointError(_exported_advice(path, graph, command))
    try:  # weights_only: a checkpoint is data, never code
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error below says it all
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickled objects, not a torch file...
        # not `from exc`: the command line prints a cause, and torch's would advise turning weights_only off
        # (running the code a pickle holds); the traceback (SEGFRAME_TRACEBACK=1) still shows it
        raise CheckpointError(f"{path} cannot be loaded as a segframe checkpoint: {load_problem(exc)}. {TRAINED}")
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "model_config" not in ckpt["hyper_parameters"]:
        raise CheckpointError(f"{path} is not a segframe checkpoint (no hyper_parameters.model_config). {TRAINED}")
    for key in ("hyper_parameters", "run_config"):  # written before the folder move: classes by their old paths
        if key in ckpt:
            ckpt[key] = current_targets(ckpt[key])
    return ckpt


TRAINED = "ckpt= takes the checkpoint `python -m segframe.train` writes (outputs/DATE/TIME/checkpoints/last.ckpt or best-*.ckpt)"


def exported_graph_kind(path: str | Path) -> str | None:
    """"onnx" or "torchscript" when `path` is a graph `segframe.export` (or anything else) wrote rather
    than a checkpoint, told by its suffix or its first bytes (ONNX: a protobuf ModelProto opening with
    its ir_version field; TorchScript: a zip archive holding code/ and constants.pkl); else None."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) == 4 and head[0] == 0x08 and head[1] < 0x80 and head[2] in (0x12, 0x1A, 0x22, 0x2A, 0x3A):
        return "onnx"
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
    return None


def _exported_advice(path: str, graph: str, command: str | None) -> str:
    """Why an exported graph is no checkpoint, and what to run instead (from its sidecar when it has one)."""
    sidecar = Path(f"{path}.json")
    source = None
    try:
        source = json.loads(sidecar.read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        pass
    ckpt = source or "CHECKPOINT.ckpt"
    origin = f"its sidecar {sidecar} names the checkpoint it came from, {source}" if source else \
        "use the .ckpt it was exported from"
    text = (f"{path} is an exported {'ONNX' if graph == 'onnx' else 'TorchScript'} graph, not a training checkpoint; "
            f"{'segframe.' + command if command else 'this command'} needs the training checkpoint (.ckpt): {origin}")
    if command == "eval":
        return (f"{text}: python -m segframe.eval ckpt={ckpt}. segframe.eval evaluates training checkpoints only, "
                f"not exported graphs; the graph's agreement with its checkpoint was measured at export (the "
                f"sidecar's \"parity\"), and `python -m segframe.predict ckpt={path} input=DIR` shows its masks")
    if command == "predict":  # predict and load_model run graphs too, told by the suffix
        suffix = ".onnx" if graph == "onnx" else ".ts"
        return (f"{path} is an exported {'ONNX' if graph == 'onnx' else 'TorchScript'} graph under a checkpoint's "
                f"name; predict and load_model run graphs named *{suffix} (with the sidecar *{suffix}.json "
                f"beside it): rename it, or pass the checkpoint it was exported from{f' ({source})' if source else ''}")
    return f"{text}: python -m segframe.{command or 'COMMAND'} ckpt={ckpt} ..."


def trained_data(ckpt: dict[str, Any]) -> dict[str, Any] | None:
    """The data config the checkpoint's model was trained on (checkpoints before `data_config`
    existed carried it inside the whole run config)."""
    hp = ckpt["hyper_parameters"]
    return hp.get("data_config") or (hp.get("config") or {}).get("data")


def module_from_checkpoint(ckpt: dict[str, Any], inference: dict[str, Any]) -> SegModule:
    """The trained SegModule of a loaded checkpoint: model, classes, palette and normalisation
    all come from the checkpoint itself."""
    hp = ckpt["hyper_parameters"]
    model_cfg = {**hp["model_config"], "pretrained": False, "init_from": None}  # weights come from the checkpoint
    module = SegModule(model=instantiate(model_cfg), optimizer=None, scheduler=None, classes=hp["classes"],
                       palette=hp["palette"], model_config=model_cfg, inference=inference,
                       # the trained loss, as trained, for the val/test loss (older checkpoints: mean CE)
                       loss_config=hp.get("loss_config"), loss_reduction=hp.get("loss_reduction", "mean"),
                       class_weighting=hp.get("class_weighting", "none"), class_pixels=hp.get("class_pixels"),
                       data_config=trained_data(ckpt))
    # a model compiled in place (torch.compile) names its tensors `model._orig_mod.<name>`
    module.load_state_dict({k.replace("._orig_mod.", ".", 1): v for k, v in ckpt["state_dict"].items()})
    return module
