"""What `python -m segframe.predict` does: class-index PNGs and overlays for image files, from a
checkpoint alone (the model runs through `SegModule.predict_scores`, i.e. segframe.evaluation.inference), or
from an exported graph (`ckpt=model.onnx`, .ts, .pt: segframe.deploy.exported, the same test-time options)."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from segframe.core.config import check_keys
from segframe.core.errors import ConfigError, MissingFileError, SampleError
from segframe.core.progress import track
from segframe.data.colours import overlay, save_index_png
from segframe.data.sample import READABLE_IMAGE_EXTS, decode_image
from segframe.deploy.exported import ExportedModel, load_exported
from segframe.deploy.sidecar import is_exported
from segframe.engine import components
from segframe.engine.checkpoint import load_checkpoint, module_from_checkpoint
from segframe.evaluation.inference import check_options, infer
from segframe.models.base import to_input


def list_inputs(spec: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """(images, skipped): a file; every image file in a folder (its top level; what is left out,
    with why, in `skipped`); or the matches of a glob pattern; sorted."""
    path = Path(spec)
    if path.is_file():
        return [path], []
    if path.is_dir():
        files, skipped = [], []
        for p in sorted(path.iterdir()):
            why = _not_an_input(p)
            if why:
                skipped.append((str(p), why))
            else:
                files.append(p)
        if not files:
            found = f"; it holds {', '.join(Path(f).name for f, _ in skipped[:5])}{' ...' if len(skipped) > 5 else ''}" \
                if skipped else ""
            raise MissingFileError(f"input={spec}: the folder holds no images ({', '.join(_EXTS)}){found}")
        return files, skipped
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
        raise MissingFileError(f"input={spec}: no such file or folder, and no file matches it as a glob pattern")
    return matches, []


_EXTS = tuple("." + e for e in READABLE_IMAGE_EXTS)


def _not_an_input(path: Path) -> str | None:
    """Why a folder entry is not predicted (None: it is): what predict reads from a folder is one
    list, READABLE_IMAGE_EXTS; a file of another name can still be given by name."""
    if path.is_dir():
        return f"a folder (input=DIR reads its top level only; for subfolders: input='{path.parent}/**/*.jpg')"
    if path.name.startswith("."):
        return "a hidden file"
    if path.suffix.lower() not in _EXTS:
        return f"not an image file name ({', '.join(_EXTS)}); give it by name (input=FILE) to try it anyway"
    return None


def _output_names(files: list[Path]) -> list[str]:
    """Output stems: the file stem, made unique when two inputs share one (a.jpg and a.png, or a
    glob over folders), checked against every name already given out."""
    taken: set[str] = set()
    names = []
    for f in files:
        name, n = f.stem, 1
        while name in taken:
            name, n = f"{f.stem}_{n}", n + 1
        taken.add(name)
        names.append(name)
    return names


@torch.no_grad()
def predict_files(module: Any, files: list[Path], out_dir: Path, alpha: float = 0.5,
                  device: str = "cpu") -> tuple[int, list[tuple[str, str]]]:
    """Writes `<stem>_mask.png` (class indices, palette PNG) and `<stem>_overlay.png` per image.
    An unreadable image, or one that fails in the model (e.g. out of memory), is reported and
    skipped. Returns (written, [(file, problem)])."""
    if any(f.parent.resolve() == out_dir.resolve() for f in files):
        raise ConfigError(f"output={out_dir} holds the input images; write the predictions to another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    module.eval().to(device)
    failed: list[tuple[str, str]] = []
    written = 0
    pairs = list(zip(files, _output_names(files)))
    for path, name in track(pairs, len(pairs), "predict", "img"):  # a bar in a terminal, a few lines elsewhere
        try:
            image = decode_image(path.read_bytes(), str(path), exif_transpose=True)
            batch = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].to(device)
            mask = module.predict_scores(batch).argmax(1)[0].cpu().numpy().astype(np.uint8)
        except (SampleError, OSError, RuntimeError) as exc:  # RuntimeError: e.g. CUDA out of memory
            hint = "; try eval.mode=slide for large images" if isinstance(exc, RuntimeError) else ""
            problem = str(exc).removeprefix(f"{path}: ") + hint  # decode errors start with the path: once is enough
            tqdm.write(f"skipping {path}: {problem}")  # keeps the progress bar intact
            failed.append((str(path), problem))
            continue
        save_index_png(mask, module.palette, out_dir / f"{name}_mask.png")
        Image.fromarray(overlay(image, mask, module.palette, alpha)).save(out_dir / f"{name}_overlay.png")
        written += 1
    return written, failed


class ExportedPredictor:
    """An exported graph behind the part of SegModule's interface `predict_files` uses: the graph
    runs through segframe.evaluation.inference with the test-time options, as a checkpoint's model would."""

    def __init__(self, model: ExportedModel, inference: dict[str, Any]):
        model.check_inference(inference)  # first: a labels graph takes no options, whatever they are
        check_options(**inference)
        self.model, self.inference, self.palette = model, inference, model.palette

    def eval(self) -> ExportedPredictor:
        return self

    def to(self, device: str) -> ExportedPredictor:
        return self  # the graph runs where load_exported put it; outputs come back on the input's device

    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        if self.model.outputs == "labels":  # one whole pass: class ids as one-hot scores
            labels = self.model(images).long()
            return torch.nn.functional.one_hot(labels, self.model.num_classes).permute(0, 3, 1, 2)
        return infer(self.model, to_input(images), **self.inference)


def predict(cfg: DictConfig, run_dir: Path) -> int:
    """Entry logic of `python -m segframe.predict`; returns the exit code."""
    check_keys(cfg, "predict")
    files, left_out = list_inputs(str(cfg.input))
    options = components.inference_options(cfg.eval)
    module: Any = ExportedPredictor(load_exported(cfg.ckpt), options) if is_exported(cfg.ckpt) else \
        module_from_checkpoint(load_checkpoint(cfg.ckpt, command="predict"), options)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    out_dir = Path(cfg.output) if cfg.output else run_dir
    written, failed = predict_files(module, files, out_dir, float(cfg.overlay_alpha), device)
    print(f"wrote {written} prediction(s) to {out_dir} (<name>_mask.png: class indices; <name>_overlay.png)")
    for what, skipped in (("unreadable file(s)", failed), (f"entries of {cfg.input} that are not images", left_out)):
        if skipped:
            print(f"skipped {len(skipped)} {what}:")
            for path, problem in skipped:
                print(f"  {path}: {problem}")
    return 0 if written else 1
