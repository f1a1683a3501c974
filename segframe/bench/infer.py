"""Inference speed per runtime, side by side in one run: the same deployable model (what
`python -m segframe.export` writes: float RGB in, logits out) run by eager PyTorch, TorchScript
(`torch.jit.load`) and ONNX Runtime on the CPU, on the same images, interleaved and repeated;
plus the dense CRF's cost per image (eval.crf=true), which runs after any of them."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from segframe.bench.common import median, table, timed
from segframe.core.paths import CONF_DIR
from segframe.deploy.exported import graph_runner
from segframe.deploy.exporting import Deployable, export_onnx, export_torchscript
from segframe.evaluation import crf

# name -> (conf/model file, overrides): FCN-8s ResNet-18 and U-Net ResNet-18, random weights
MODELS = {"fcn8s_resnet18": ("fcn8s", {"backbone": "resnet18"}), "unet_resnet18": ("unet", {"backbone": "resnet18"}),
          "deeplabv3plus_resnet18": ("deeplabv3plus", {"backbone": "resnet18"})}


def build(name: str, num_classes: int) -> torch.nn.Module:
    file, overrides = MODELS[name]
    node = OmegaConf.load(CONF_DIR / "model" / f"{file}.yaml")
    node = OmegaConf.merge(node, {"num_classes": num_classes, "pretrained": False, **overrides})
    return instantiate(node).eval()


def _runtimes(model: torch.nn.Module, example: torch.Tensor, folder: Path) -> dict[str, Callable[[torch.Tensor], Any]]:
    wrapper = Deployable(model).eval()
    runs: dict[str, Callable[[torch.Tensor], Any]] = {"eager": wrapper}
    export_torchscript(wrapper, example, folder / "model.ts")
    runs["torchscript"] = graph_runner(folder / "model.ts", "torchscript")
    try:
        export_onnx(wrapper, example, folder / "model.onnx", "torchscript", None)
        runs["onnxruntime"] = graph_runner(folder / "model.onnx", "onnx", cpu_only=True)
    except Exception as exc:  # noqa: BLE001 (no onnx/onnxruntime here: the row says so)
        runs["onnxruntime"] = exc
    return runs


def bench_infer(models: list[str], size: tuple[int, int], batch: int, reps: int,
                num_classes: int = 21) -> list[tuple]:
    """Rows (model, runtime, ms per image, images/s, spread) at `size`, runtimes interleaved per
    repeat; then one row per model for the CRF on the same size."""
    rows = []
    x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    for name in models:
        model = build(name, num_classes)  # outside inference mode: smp models probe their graph with autograd
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            runs = _runtimes(model, x, Path(tmp))
            ready = {k: f for k, f in runs.items() if callable(f)}
            times: dict[str, list[float]] = {k: [] for k in ready}
            for f in ready.values():  # warm-up: TorchScript's profiling executor optimises on its 2nd-3rd call
                for _ in range(3):
                    f(x)
            for _ in range(reps):
                for k, f in ready.items():
                    times[k].append(timed(lambda: f(x), torch.device("cpu")) / batch)
        for k in runs:
            if k not in ready:
                rows.append((name, k, float("nan"), float("nan"), f"not run: {runs[k]}"))
                continue
            ms = 1000 * median(times[k])
            rows.append((name, k, ms, 1000 / ms, f"{1000 * min(times[k]):.1f}-{1000 * max(times[k]):.1f}"))
        if crf.available() is None:
            with torch.inference_mode():
                logits = model(x[:1])
            crf_times = [timed(lambda: crf.refine(logits, x[:1]), torch.device("cpu")) for _ in range(max(1, reps))]
            ms = 1000 * median(crf_times)
            rows.append((name, f"+ dense CRF ({num_classes} classes)", ms, 1000 / ms,
                         f"{1000 * min(crf_times):.1f}-{1000 * max(crf_times):.1f}"))
    return rows


def report(rows: list[tuple], size: tuple[int, int], batch: int, reps: int) -> str:
    head = (f"deployable model (float RGB in, logits out, random weights), batch {batch}, {size[0]}x{size[1]}, "
            f"CPU, median of {reps} interleaved repeats after 3 warm-up calls; ms and img/s per image")
    return head + "\n" + table(["model", "runtime", "ms / image", "img / s", "min-max ms"], rows)
