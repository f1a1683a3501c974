"""The Python API for notebooks and services: a trained model from a checkpoint (or an exported ONNX /
TorchScript file) that takes an image and returns its class-id mask or class probabilities.

    from segframe import load_model
    m = load_model("outputs/DATE/TIME/checkpoints/best-epoch012.ckpt", flip=True)
    mask = m.predict("photo.jpg")              # HxW uint8 class ids
    colours = m.colorize(mask)                 # HxWx3 uint8, the dataset palette

The model runs through segframe.evaluation.inference.infer, as `eval` and `predict` run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segframe.core.errors import ConfigError, InputError, MissingFileError, SampleError
from segframe.data.colours import colorize
from segframe.data.sample import decode_image, pil_rgb
from segframe.deploy.exported import check_inference, load_exported
from segframe.deploy.sidecar import export_command, is_exported, read_sidecar
from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint
from segframe.engine.components import INFERENCE_KEYS
from segframe.evaluation.inference import check_options, infer, probabilities
from segframe.models.base import to_input

EXPECTED = "an image path (str or Path), a PIL image, or an HxWx3 uint8 numpy array (HxW or HxWx4 also taken)"


def _options(given: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` updated with `given`, refused when a key is unknown or a value cannot work."""
    unknown = sorted(set(given) - set(INFERENCE_KEYS))
    if unknown:
        raise ConfigError(f"unknown test-time option(s) {unknown}; the options are {list(INFERENCE_KEYS)} "
                          f"(as eval.* on the command line)")
    options = {**(base or {}), **{k: v for k, v in given.items() if v is not None}}
    check_options(**options)
    return options


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but torch sees no CUDA device here; use device='cpu' or 'auto'")
    return chosen


def as_rgb(image: Any) -> np.ndarray:
    """An input of `predict` as an HxWx3 uint8 RGB array, read as `python -m segframe.predict` reads
    files: a path is decoded, and a PIL image converted, by the same code (segframe.data.sample):
    EXIF orientation applied, any 8-bit mode (L, P, LA, RGBA, CMYK...) made RGB, 16-bit and float
    refused. A numpy array is taken as it is (no EXIF); HxW and HxWx4 become RGB."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise MissingFileError(f"image {path} does not exist")
        return decode_image(path.read_bytes(), str(path), exif_transpose=True)
    if isinstance(image, Image.Image):
        name = f"a PIL image ({image.mode}, {image.width}x{image.height})"
        try:
            return pil_rgb(image, name, exif_transpose=True)
        except SampleError as exc:  # 16-bit or float: refused as the command line refuses such files
            raise InputError(f"{exc} (expected an 8-bit mode: RGB, RGBA, L, LA, P, CMYK...)") from exc
        except (OSError, ValueError) as exc:  # a mode PIL cannot make RGB (e.g. LAB, HSV), or unreadable data
            raise InputError(f"{name} cannot be made RGB ({exc}); convert it to RGB first") from exc
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise InputError(f"a numpy array of dtype {image.dtype} was passed; expected uint8 (0..255), e.g. "
                             f"(array * 255).clip(0, 255).astype(np.uint8) for floats in [0, 1]")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        elif image.ndim == 3 and image.shape[2] in (1, 4):
            image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
        if image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise InputError(f"a numpy array of shape {image.shape} was passed; expected HxWx3 (RGB, channels last)")
        return np.ascontiguousarray(image)
    raise InputError(f"{type(image).__module__}.{type(image).__qualname__} was passed; expected {EXPECTED}")


class Segmenter:
    """A trained model: `predict`, `predict_proba`, `colorize`; `classes`, `palette`, `options`."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], classes: Sequence[str],
                 palette: Sequence[Sequence[int]], options: dict[str, Any], device: torch.device, source: str):
        self.net, self.device, self.source = net, device, source
        self.classes, self.palette = list(classes), [list(c) for c in palette]
        self.options = options  # the test-time options of every call (a call's own keywords override them)
        self.labels_only = getattr(net, "outputs", "logits") == "labels"  # an export with outputs=labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return f"Segmenter({self.source!r}, {self.num_classes} classes, device={self.device}, options={self.options})"

    def predict_proba(self, image: Any, **options: Any) -> np.ndarray:
        """Class probabilities (softmax), CxHxW float32 at the image's own size. `image`: a path, a
        PIL image or an HxWx3 uint8 array (greyscale and RGBA become RGB). Keywords (scales, flip,
        mode, crop, stride) override the model's test-time options for this call."""
        opts = _options(options, self.options)
        if self.labels_only:
            raise ConfigError(f"{self.source} was exported with export.outputs=labels: it gives class ids only, "
                              f"no probabilities; use predict(), or re-export with export.outputs=logits")
        batch = self._batch(image)
        with torch.inference_mode():
            probs = probabilities(infer(self.net, to_input(batch), **opts).float(), **opts)
        return probs[0].cpu().numpy().astype(np.float32, copy=False)

    def predict(self, image: Any, **options: Any) -> np.ndarray:
        """Class ids, HxW uint8 (the argmax of predict_proba); same arguments as predict_proba."""
        if not self.labels_only:
            return self.predict_proba(image, **options).argmax(0).astype(np.uint8)
        self.net.check_inference(_options(options, self.options))  # class ids: one whole pass only
        with torch.inference_mode():
            return self.net(to_input(self._batch(image)))[0].cpu().numpy().astype(np.uint8)

    def _batch(self, image: Any) -> torch.Tensor:
        rgb = as_rgb(image)
        rgb = rgb if rgb.flags.writeable else rgb.copy()  # PIL's arrays are read-only; torch wants writable
        return torch.from_numpy(rgb).permute(2, 0, 1)[None].to(self.device)

    def colorize(self, mask: np.ndarray) -> np.ndarray:
        """HxW class ids -> HxWx3 uint8 in the dataset's palette (void, 255, white)."""
        return colorize(np.asarray(mask), self.palette)


def load_model(path: str | Path, device: str = "auto", scales: Sequence[float] | None = None,
               flip: bool | None = None, mode: str | None = None, crop: int | None = None,
               stride: int | None = None, **more: Any) -> Segmenter:
    """The model of a segframe checkpoint (`.ckpt`) or of a file `python -m segframe.export` wrote
    (`.onnx`, `.ts`, `.pt`, `.torchscript`), ready to predict in eval mode.

    device: "auto" (CUDA when there is one), "cpu", "cuda" or "cuda:N" (an exported graph runs
    where its runtime puts it: onnxruntime on CUDA when it has it, TorchScript on the CPU).
    scales, flip, mode, crop, stride: the test-time options of `eval.*` (segframe.evaluation.inference;
    unset: one whole-image pass); `more`: the other eval.* inference keys (e.g. crf=True). All are
    checked before anything loads, and each call of predict / predict_proba may override them."""
    path = Path(path)
    given = {"scales": scales, "flip": flip, "mode": mode, "crop": crop, "stride": stride, **more}
    if is_exported(path) and path.is_file():  # a labels graph takes no options: refused as predict refuses them
        check_inference(path, read_sidecar(path), {k: v for k, v in given.items() if v is not None})
    options = _options(given)
    target = _device(device)
    if is_exported(path):  # onnxruntime (the export extra) is imported only for an .onnx file
        if not path.is_file():
            raise MissingFileError(f"exported model {path} does not exist; make it: {export_command(path)}")
        exported = load_exported(str(path))
        return Segmenter(exported, exported.classes, exported.palette, options, target, str(path))
    module = module_from_checkpoint(load_checkpoint(str(path), command="predict"), options)
    module.eval().to(target)
    return Segmenter(module.model, module.classes, module.palette, options, target, str(path))
