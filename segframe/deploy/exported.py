"""An exported model (ONNX or TorchScript, written by `python -m segframe.export`) read back: its
sidecar JSON checked, the graph loaded, and called like a segframe model.

The graph takes images [B,3,H,W] of any size (float32 RGB in [0,1], or uint8 0..255 when exported
with `export.input=uint8`); normalisation and padding happen inside it. It returns logits
[B,C,H,W] or class ids [B,H,W] (`export.outputs=labels`). Classes, palette and how it was made are
in the sidecar `<graph>.json` beside it (segframe.deploy.sidecar), with the graph's size and sha256:
loading checks that the two belong together (check_pair) and refuses a graph beside another
export's sidecar, or one whose export stopped before its sidecar was written.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from segframe.core.errors import ConfigError, ExportError, MissingFileError
from segframe.deploy.sidecar import (
    export_command,
    graph_differs,
    graph_kind,
    interrupted,
    read_sidecar,
    sidecar_path,
    stopped_export,
)
from segframe.evaluation.inference import single_pass

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "segframe[export]"'
PROBE_SIZE = 32  # a multiple of every model's pad_multiple: the probe input needs no padding


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"ONNX graphs need onnxruntime, which is not installed: {INSTALL_HINT}") from exc
    return onnxruntime


def onnx_session(path: str | Path, cpu_only: bool = False) -> Any:
    """An onnxruntime session of `path`: CUDA when onnxruntime has it (and not `cpu_only`), else CPU."""
    ort = _onnxruntime()
    available = ort.get_available_providers()
    providers = ["CPUExecutionProvider"]
    if not cpu_only and "CUDAExecutionProvider" in available:
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about providers on every load
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def jit_load(path: str | Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated" (torch >= 2.9)
        return torch.jit.load(str(path), map_location="cpu").eval()


def session_runner(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


ONNX_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8"}


def onnx_declares(session: Any) -> dict[str, Any]:
    """What an ONNX graph declares about itself: input dtype, and outputs (logits: rank 4, labels:
    rank 3) with the class count where the channel axis (1) is fixed."""
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    found: dict[str, Any] = {"input": ONNX_DTYPES.get(inp.type, inp.type)}
    if len(out.shape) == 4:
        found["outputs"] = "logits"
        if isinstance(out.shape[1], int):
            found["num_classes"] = out.shape[1]
    elif len(out.shape) == 3:
        found["outputs"] = "labels"
    return found


def graph_runner(path: str | Path, kind: str, cpu_only: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The graph at `path` as a function of a CPU tensor in the graph's input dtype, returning its
    output as a tensor: an onnxruntime session (CUDA when it has it, unless `cpu_only`) or a
    TorchScript module on the CPU."""
    if kind == "onnx":
        return session_runner(onnx_session(path, cpu_only=cpu_only))
    module = jit_load(path)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run


class ExportedModel:
    """An exported graph with its sidecar; called like a segframe model on float [B,3,H,W] in [0,1]
    (or uint8 [B,3,H,W]), it returns the graph's output as a torch tensor on the input's device:
    logits float [B,C,H,W] or labels [B,H,W]."""

    def __init__(self, path: str | Path, sidecar: dict[str, Any], runner: Any, kind: str):
        self.path, self.sidecar, self.kind = Path(path), sidecar, kind
        self.classes = list(sidecar["classes"])
        self.palette = [list(c) for c in sidecar["palette"]]
        self.num_classes = int(sidecar["num_classes"])
        self.outputs = sidecar["outputs"]
        self.input_dtype = sidecar["input"]["dtype"]
        self._run = runner

    def graph_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` (float in [0,1] or uint8) as the graph takes it, on the CPU."""
        x = x.detach().cpu()
        if self.input_dtype == "uint8":
            return x if x.dtype == torch.uint8 else (x.float() * 255).round_().clamp_(0, 255).to(torch.uint8)
        return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ExportError(f"{self.path} takes images [B,3,H,W], got a tensor of shape {tuple(x.shape)}")
        return self._run(self.graph_input(x).contiguous()).to(x.device)

    def probe(self) -> dict[str, Any]:
        """What the graph returns for one small image in the sidecar's input dtype: outputs (logits
        [B,C,H,W] or labels [B,H,W], told by the rank) and, for logits, the class count (axis 1)."""
        out = self(torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE))
        if out.dim() == 4:
            return {"outputs": "logits", "num_classes": int(out.shape[1])}
        if out.dim() == 3:
            return {"outputs": "labels"}
        return {"outputs": f"a tensor of shape {tuple(out.shape)}"}

    def check_inference(self, inference: dict[str, Any]) -> None:
        check_inference(self.path, self.sidecar, inference)


def check_inference(graph: str | Path, sidecar: dict[str, Any], inference: dict[str, Any]) -> None:
    """Refuse test-time options the graph of this sidecar cannot honour, before any work (predict
    on the command line and load_model in Python both ask here): class ids cannot be averaged or
    refined, so a labels graph runs one whole pass."""
    if sidecar.get("outputs") == "labels" and not single_pass(**inference):
        asked = {k: inference[k] for k in ("scales", "flip", "mode", "crf") if k in inference}
        raise ConfigError(
            f"{graph} was exported with export.outputs=labels: it returns class ids, which cannot be averaged "
            f"over scales, flips or windows, nor refined by a CRF (asked: {asked}); such a graph takes no "
            f"test-time options but one whole pass (the defaults). To use them, export logits (export.outputs=logits, "
            f"the default): "
            f"{export_command(graph, {**sidecar, 'outputs': 'logits'})}")


def load_exported(path: str | Path) -> ExportedModel:
    """An exported graph and its sidecar, checked to belong together (check_pair): an ONNX file
    (onnxruntime, CUDA when available) or a TorchScript file (torch.jit.load, CPU)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"exported model {path} does not exist; make it: {export_command(path)}")
    kind = graph_kind(path)
    side = read_sidecar(path)
    declared: dict[str, Any] = {}
    try:
        if kind == "onnx":
            session = onnx_session(path)
            declared, runner = onnx_declares(session), session_runner(session)
        else:
            runner = graph_runner(path, kind)
    except ExportError:
        raise
    except Exception as exc:  # a truncated or foreign file
        size = side.get("graph_bytes")
        short = f" (it is {path.stat().st_size} bytes, its sidecar recorded {size}: an incomplete copy?)" \
            if isinstance(size, int) and size != path.stat().st_size else ""
        raise ExportError(f"{path} cannot be loaded as a {kind} graph ({type(exc).__name__}: {exc}){short}; "
                          f"re-export it: {export_command(path, side)}") from exc
    model = ExportedModel(path, side, runner, kind)
    check_pair(model, declared)
    return model


def check_pair(model: ExportedModel, declared: dict[str, Any]) -> None:
    """Refuse a graph and a sidecar that do not belong together, naming both files and what
    differs: the input dtype (ONNX declares it), the output kind and class count (ONNX declares
    them; a probe run shows them for every graph), and the graph's size and sha256 the sidecar
    recorded at export (sidecar.graph_differs: hashed on every load, a fraction of what building the
    session costs). Sidecars written before that hash was recorded still load, checked on the rest
    (and a warning says to export again)."""
    path, side_path, side = model.path, sidecar_path(model.path), model.sidecar
    differ = []
    found = dict(declared)
    if declared.get("input", model.input_dtype) != model.input_dtype:  # then only what the graph declares
        differ.append(f"the graph takes {declared['input']} images but the sidecar says input {model.input_dtype}")
    else:
        try:
            found.update(model.probe())
        except Exception as exc:  # noqa: BLE001 (a runtime's own error on a graph it cannot run so)
            first = (str(exc).strip().splitlines() or [""])[0]
            found = {"outputs": f"an error on a {model.input_dtype} image ({type(exc).__name__}: {first})"}
    if found.get("outputs", model.outputs) != model.outputs:
        differ.append(f"the graph returns {_OUTPUTS.get(found['outputs'], found['outputs'])} but the sidecar "
                      f"says outputs={model.outputs} ({_OUTPUTS[model.outputs]})")
    elif found.get("num_classes", model.num_classes) != model.num_classes:
        differ.append(f"the graph outputs {found['num_classes']} classes but its sidecar ({side_path.name}) "
                      f"names {model.num_classes}")
    file_differs = None if differ else graph_differs(path, side)  # the hash only when nothing else told
    differ += [file_differs] if file_differs else []
    stopped = interrupted(path) if differ else None  # (hashes the graph only where a partial sidecar is left)
    if stopped:
        raise ExportError(f"{path} and its sidecar {side_path} do not belong together: {'; '.join(differ)}; "
                          f"{stopped_export(path, stopped)}")
    if differ:
        raise ExportError(f"{path} and its sidecar {side_path} do not belong together: {'; '.join(differ)}. "
                          f"Keep each graph with the sidecar written beside it, or export the pair again: "
                          f"{export_command(path, side)}")
    if not side.get("graph_sha256"):
        log.warning("%s records no graph_sha256 (written before segframe recorded it): checked on its input, "
                    "outputs and class count only; export again to record it: %s", side_path,
                    export_command(path, side))


_OUTPUTS = {"logits": "logits [B,C,H,W]", "labels": "class ids [B,H,W]"}
