"""What `python -m segframe.export` does: a checkpoint's model as a deployable graph (ONNX or
TorchScript) that takes images of any size, checked against eager PyTorch on images of odd sizes,
written with its sidecar JSON (nothing is written when the check fails): the graph renamed into place
first, the sidecar (with the graph's size and sha256) last, so that a graph is never loaded beside a
sidecar not its own (write_pair)."""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

import segframe
from segframe.core.atomic import fsync
from segframe.core.config import check_keys, plain
from segframe.core.errors import ExportError
from segframe.core.progress import Eta
from segframe.data.manifest import sha256_file
from segframe.deploy.exported import INSTALL_HINT, graph_runner
from segframe.deploy.sidecar import (
    FORMAT,
    FORMAT_VERSION,
    TORCHSCRIPT_OPSET,
    TORCHSCRIPT_SUFFIXES,
    export_command,
    json_object,
    partial_sidecar_path,
    sidecar_path,
)
from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint, trained_data

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
EXPORTERS = ("auto", "dynamo", "torchscript")
PARITY_SIZES = ((2, 37, 53), (1, 64, 45), (1, 101, 77))  # (batch, H, W): odd sizes, and a batch of 2


class Deployable(nn.Module):
    """A segframe model as shipped: uint8 0..255 or float [0,1] RGB images [B,3,H,W] in, logits
    [B,C,H,W] or class ids [B,H,W] (int64) out. Normalisation and padding are the model's own."""

    def __init__(self, model: nn.Module, uint8_input: bool = False, labels: bool = False):
        super().__init__()
        self.model, self.uint8_input, self.labels = model, uint8_input, labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.uint8_input:
            x = x.float() / 255.0
        logits = self.model(x)
        return logits.argmax(1) if self.labels else logits


def parity_images(seed: int = 0) -> list[torch.Tensor]:
    """Random uint8 images [B,3,H,W] of the PARITY_SIZES, the same for every export."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (b, 3, h, w), generator=gen, dtype=torch.uint8) for b, h, w in PARITY_SIZES]


def export_onnx(wrapper: Deployable, example: torch.Tensor, path: Path, exporter: str, opset: int | None) -> int:
    """Write the ONNX graph with dynamic batch, height and width; returns the opset written."""
    try:
        import onnx
    except ImportError as exc:
        raise ExportError(f"format=onnx needs onnx and onnxruntime, which are not installed: {INSTALL_HINT}") from exc
    names = {"input_names": ["images"], "output_names": ["labels" if wrapper.labels else "logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about the legacy exporter
        if exporter == "dynamo":
            for name in ("onnx_ir", "onnxscript", "torch.onnx"):  # INFO lines by the hundred under Hydra's logging
                logging.getLogger(name).setLevel(logging.WARNING)
            dim = torch.export.Dim.DYNAMIC
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, external_data=False, opset_version=opset,
                              verbose=False, dynamic_shapes=({0: dim, 2: dim, 3: dim},), **names)
        else:
            out_axes = {0: "batch", 1: "height", 2: "width"} if wrapper.labels else \
                {0: "batch", 2: "height", 3: "width"}
            torch.onnx.export(wrapper, (example,), str(path), dynamo=False, opset_version=opset or TORCHSCRIPT_OPSET,
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            names["output_names"][0]: out_axes}, **names)
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def export_torchscript(wrapper: Deployable, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings: the sizes stay dynamic (checked by the parity run)
        traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        torch.jit.save(traced, str(path))  # (FutureWarning: TorchScript is deprecated in torch >= 2.9)


def _runner(path: Path, kind: str) -> Any:
    return graph_runner(path, kind, cpu_only=True)  # parity against the CPU reference, on the CPU


@torch.no_grad()
def parity(wrapper: Deployable, path: Path, kind: str, images: list[torch.Tensor], label: str = "parity",
           say: Callable[[str], Any] = print) -> dict[str, Any]:
    """The exported graph at `path` against eager PyTorch on `images` (uint8 [B,3,H,W]): the largest
    |logit difference| (None for labels graphs) and the fraction of pixels with the same class. Says
    each batch's place and the time left: `parity (dynamo): 1/3 batches (33%), 0:02 elapsed, ETA 0:04 [2x3x37x53]`."""
    run = _runner(path, kind)
    max_diff, same, total = 0.0, 0, 0
    eta = Eta(len(images))
    for k, img in enumerate(images, 1):
        inp = img if wrapper.uint8_input else img.float() / 255.0
        ref = wrapper(inp)
        out = run(inp.contiguous())
        if tuple(out.shape) != tuple(ref.shape):
            raise ExportError(f"the exported graph returned shape {tuple(out.shape)} for input "
                              f"{tuple(inp.shape)}; eager PyTorch {tuple(ref.shape)}")
        if wrapper.labels:
            same += int((out.long() == ref).sum())
        else:
            max_diff = max(max_diff, float((out.float() - ref).abs().max()))
            same += int((out.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[-2] * ref.shape[-1]
        say(f"{label}: {eta.text(k, 'batches')} [{'x'.join(map(str, img.shape))}]")
    return {"max_abs_logit_diff": None if wrapper.labels else max_diff, "argmax_agreement": same / total,
            "sizes": [list(s) for s in PARITY_SIZES], "compared": "labels" if wrapper.labels else "logits"}


def _parity_problem(numbers: dict[str, Any], tolerance: float, min_agreement: float) -> str | None:
    diff, agree = numbers["max_abs_logit_diff"], numbers["argmax_agreement"]
    if (diff is not None and not diff <= tolerance) or not agree >= min_agreement:
        diff_text = "n/a (labels)" if diff is None else f"{diff:.3g}"
        return (f"max |logit difference| {diff_text} (allowed <= {tolerance:g}), same class on "
                f"{agree:.6%} of pixels (required >= {min_agreement:.4%})")
    return None


def default_output(ckpt: str, fmt: str) -> Path:
    return Path(ckpt).with_suffix(FORMATS.get(fmt, ".onnx"))


def _check_request(fmt: str, opts: dict[str, Any], output: Path) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if opts["outputs"] not in ("logits", "labels") or opts["input"] not in ("float", "uint8"):
        raise ExportError(f"export.outputs must be logits or labels and export.input float or uint8, got "
                          f"{opts['outputs']!r} and {opts['input']!r}")
    if opts["exporter"] not in EXPORTERS:
        raise ExportError(f"export.exporter must be one of {EXPORTERS}, got {opts['exporter']!r}")
    suffixes = (".onnx",) if fmt == "onnx" else TORCHSCRIPT_SUFFIXES
    if output.suffix.lower() not in suffixes:
        raise ExportError(f"output={output}: a {fmt} graph is named *{' or *'.join(suffixes)} (predict and "
                          "load_exported tell the format by the suffix)")


def export_checkpoint(ckpt_path: str, fmt: str, output: Path, opts: dict[str, Any]) -> dict[str, Any]:
    """Export, check parity, write graph + sidecar atomically; returns the sidecar."""
    _check_request(fmt, opts, output)
    ckpt = load_checkpoint(ckpt_path, command="export")
    module = module_from_checkpoint(ckpt, {})
    model = module.model.float().eval().to(memory_format=torch.contiguous_format)
    wrapper = Deployable(model, uint8_input=opts["input"] == "uint8", labels=opts["outputs"] == "labels").eval()
    images = parity_images()
    example = images[0] if wrapper.uint8_input else images[0].float() / 255.0
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp_graph = output.with_name(f".{output.name}.partial{output.suffix}")
    exporters = ["dynamo", "torchscript"] if opts["exporter"] == "auto" else [opts["exporter"]]
    if fmt == "torchscript":
        exporters = ["jit.trace"]
    tried: list[str] = []
    try:
        for exporter in exporters:
            try:
                if fmt == "onnx":
                    opset = export_onnx(wrapper, example, tmp_graph, exporter, opts.get("opset"))
                else:
                    opset = None
                    export_torchscript(wrapper, example, tmp_graph)
                numbers = parity(wrapper.eval(), tmp_graph, fmt, images,  # (an exporter may leave it in train mode)
                                 label=f"parity ({exporter})")
            except ExportError:
                raise
            except Exception as exc:  # e.g. the dynamo exporter without onnxscript, or an unsupported op
                tried.append(f"{exporter}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            problem = _parity_problem(numbers, float(opts["tolerance"]), float(opts["min_agreement"]))
            print(f"parity ({exporter}): max |logit difference| {numbers['max_abs_logit_diff']}, "
                  f"argmax agreement {numbers['argmax_agreement']:.6%}")
            if problem is None:
                break
            tried.append(f"{exporter}: parity failed: {problem}")
        else:
            raise ExportError(f"{ckpt_path}: no {fmt} graph matched eager PyTorch; nothing written. "
                              + "; ".join(tried))
        hp = ckpt["hyper_parameters"]
        sidecar = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "graph": fmt,
            # load_exported refuses a graph that is not this one (sidecar.graph_differs)
            "graph_sha256": sha256_file(tmp_graph), "graph_bytes": tmp_graph.stat().st_size,
            "input": {"dtype": "uint8" if wrapper.uint8_input else "float32", "layout": "NCHW", "channels": "RGB",
                      "range": [0, 255] if wrapper.uint8_input else [0, 1], "height": "any", "width": "any"},
            "outputs": opts["outputs"], "labels_dtype": "int64" if wrapper.labels else None,
            "classes": list(module.classes), "palette": module.palette, "num_classes": len(module.classes),
            "normalisation": {"mean": list(model.norm_mean), "std": list(model.norm_std),
                              "input_scale": model.input_scale, "channel_order": model.channel_order,
                              "applied": "inside the graph"},
            "model_config": hp["model_config"], "data_config": trained_data(ckpt),
            "checkpoint": str(Path(ckpt_path).resolve()), "checkpoint_sha256": sha256_file(ckpt_path),
            "opset": opset, "exporter": exporter, "exporters_failed": tried, "torch": torch.__version__,
            "segframe_version": segframe.__version__,
            "parity": {**numbers, "tolerance": float(opts["tolerance"]), "min_agreement": float(opts["min_agreement"]),
                       "reference": "eager PyTorch, CPU, float32", "runtime": "onnxruntime CPU" if fmt == "onnx"
                       else "torch.jit.load CPU", "onnxruntime": _ort_version() if fmt == "onnx" else None},
        }
        write_pair(tmp_graph, output, sidecar)
        return sidecar
    finally:
        tmp_graph.unlink(missing_ok=True)



def write_pair(tmp_graph: Path, output: Path, sidecar: dict[str, Any]) -> None:
    """Put the checked graph `tmp_graph` at `output` and `sidecar` at `<output>.json`, the sidecar
    last: its rename is what finishes an export. Until then `output` is the old graph with its old
    sidecar, or the new graph beside a sidecar recording another graph's sha256 (or beside none):
    load_exported refuses that, naming `.<output>.json.partial`, which is left for it. An old sidecar
    that records no sha256 (written before segframe recorded it) is removed before the graph is
    replaced, as it could not tell the new graph from the old."""
    side, partial = sidecar_path(output), partial_sidecar_path(output)
    try:
        partial.write_text(json.dumps(sidecar, indent=2, default=_json_default) + "\n")
        fsync(partial)
        fsync(tmp_graph)
        if side.is_file() and not json_object(side).get("graph_sha256"):
            side.unlink()
        os.replace(tmp_graph, output)
    except BaseException:  # the old graph is still in place: nothing of this export is left
        partial.unlink(missing_ok=True)
        raise
    try:
        os.replace(partial, side)
    except OSError as exc:
        raise ExportError(f"wrote the graph {output} but not its sidecar {side} ({type(exc).__name__}: {exc}); "
                          f"loading refuses the graph until its sidecar is there (the sidecar is left in "
                          f"{partial}): export again: {export_command(output, sidecar)}") from exc
    fsync(output.parent)



def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist()
    return str(value)


def export(cfg: DictConfig) -> int:
    """Entry logic of `python -m segframe.export`; returns the exit code."""
    check_keys(cfg, "export")
    opts = plain(cfg.export)
    output = Path(cfg.output) if cfg.output else default_output(str(cfg.ckpt), str(cfg.format))
    torch.manual_seed(0)
    sidecar = export_checkpoint(str(cfg.ckpt), str(cfg.format), output, opts)
    p = sidecar["parity"]
    print(f"wrote {output} ({sidecar['graph']}, exporter {sidecar['exporter']}, input {sidecar['input']['dtype']}, "
          f"outputs {sidecar['outputs']}) and {sidecar_path(output)}")
    print(f"parity on {len(p['sizes'])} images of odd sizes: max |logit difference| {p['max_abs_logit_diff']}, "
          f"same class on {p['argmax_agreement']:.4%} of pixels")
    return 0
