"""MODEL_CARD.md beside metrics.json in a training run directory: what the model is, what it was
trained on and how, what it scored, on what hardware, and how to load its best checkpoint.
`render_card` builds the markdown from plain values only; `write_model_card` gathers them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segframe.core.atomic import write_text_atomic
from segframe.core.errors import ManifestError
from segframe.core.host import cpu_name
from segframe.core.metric_names import SUMMARY_HEADERS, image_summary_keys, percent, summary_keys
from segframe.data.manifest import sha256_file, split_info

CARD = "MODEL_CARD.md"


def _text(value: Any) -> str:
    return "n/a" if value is None or value == "" else str(value)


def _target(node: Any) -> str | None:
    """A config node's `_target_` (its class or function), or None for a missing node."""
    return node.get("_target_") if isinstance(node, dict) else None


def _arguments(node: Any) -> str:
    """A node's plain arguments, `key value, ...` (without `_target_`, `_partial_` and nulls)."""
    if not isinstance(node, dict):
        return ""
    args = [f"{k} {v}" for k, v in node.items() if not k.startswith("_") and v is not None]
    return f" ({', '.join(args)})" if args else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d} (h:mm:ss; {seconds} s)"


def _fit_time(metrics: dict[str, Any]) -> str:
    """The fit's wall time; for a run resumed after a stop, over its processes, each one's beside it."""
    per_process = metrics.get("fit_seconds_per_process") or []
    if len(per_process) < 2:
        return _duration(metrics.get("fit_seconds"))
    return (f"{_duration(metrics.get('fit_seconds'))}, over {len(per_process)} processes (resumed "
            f"{len(per_process) - 1}x; {' + '.join(f'{s} s' for s in per_process)})")


def _throughput(metrics: dict[str, Any]) -> str:
    rate, images = metrics.get("train_images_per_s"), metrics.get("train_images")
    return f"{_text(rate)}" + (f" ({images:,} images trained / fit time)" if isinstance(images, int) else "")


def recipe(config: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The training recipe as (name, value) rows, from the run's resolved plain config."""
    optimizer, datamodule = config.get("optimizer") or {}, config.get("datamodule") or {}
    augmentation = (config.get("augmentation") or {}).get("train")
    return [
        ("optimizer", _text(_target(optimizer)) + _arguments({k: v for k, v in optimizer.items() if k != "lr"})),
        ("learning rate", _text(optimizer.get("lr"))),
        ("scheduler", (_target(config.get("scheduler")) or "none (constant)") + _arguments(config.get("scheduler"))),
        ("loss", f"{_target(config.get('loss')) or 'cross entropy'}{_arguments(config.get('loss'))}"),
        ("epochs / steps", f"{_text(metrics.get('epochs'))} / {_text(metrics.get('steps'))}"),
        ("batch size", _text(datamodule.get("batch_size"))),
        ("crop", _text((config.get("data") or {}).get("crop_size"))),
        ("augmentation", f"{_text(_target(augmentation))}{_arguments(augmentation)}"),
        ("seed", _text(config.get("seed"))),
    ]


def render_card(metrics: dict[str, Any], config: dict[str, Any], per_class_table: str, checkpoint_sha256: str | None,
                hardware: dict[str, Any], train_split: tuple[str, int] | None = None) -> str:
    """The model card's markdown. `metrics`: metrics.json's content; `config`: the run's resolved
    plain config; `per_class_table`: per_class.md's content; `hardware`: {"device", "torch",
    "device_count"}; `train_split`: (name, number of images) from the manifest, when at hand."""
    model = config.get("model") or {}
    ckpt = _text(metrics.get("checkpoint"))
    name = _text(metrics.get("dataset"))
    gflops_at = metrics.get("model_gflops_at")
    at = f" at {gflops_at[0]}x{gflops_at[1]}" if gflops_at else ""
    params = metrics.get("model_parameters")
    classes = metrics.get("classes") or []
    arch = f", arch {model['arch']}" if "arch" in model else ""
    backbone = model.get("backbone") or model.get("encoder")  # `encoder`: smp checkpoints before it was one name
    family = str(_target(model) or "a model").rsplit(".", 1)[-1] + (f" {model['arch']}" if "arch" in model else "")
    inference = {k: v for k, v in (metrics.get("inference") or {}).items()  # crf_* only matter with crf on
                 if not k.startswith("crf") or (metrics.get("inference") or {}).get("crf")}
    rows = [
        ("# Model card", None),
        (f"{family}{f' ({backbone})' if backbone else ''} on {name}, trained with segframe. Written at the end of "
         f"training; metrics.json beside it holds every number here.", None),
        ("## Data", [("dataset", name),
                     ("train split", f"{train_split[0]} ({train_split[1]} images)" if train_split else "n/a"),
                     ("evaluated on", f"{_text(metrics.get('split'))} ({_text(metrics.get('num_samples'))} images)")]),
        ("## Model", [("family (_target_)", _text(_target(model)) + arch),
                      ("backbone", _text(backbone)),
                      ("classes", f"{len(classes)}: {', '.join(classes)}"),
                      ("parameters", f"{params:,}" if isinstance(params, int) else _text(params)),
                      ("output stride", _text(metrics.get("model_output_stride"))),
                      ("GFLOPs", f"{_text(metrics.get('model_gflops'))}{at}")]),
        ("## Training recipe", recipe(config, metrics)),
        ("## Metrics", [(SUMMARY_HEADERS[k], percent(metrics.get(k)))
                        for k in (*summary_keys(), *image_summary_keys())]
         + [("test-time options", _arguments(inference).strip(" ()") or "one whole-image pass")]),
    ]
    lines: list[str] = []
    for title, table in rows:
        lines += [title, ""]
        if table is not None:
            lines += ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in table), ""]
    lines += ["Per class, then the summary scores (per_class.md):", "", per_class_table.strip(), "",
              "## Hardware and time", "", "| | |", "| --- | --- |",
              f"| device | {_text(hardware.get('device'))} |",
              f"| device count | {_text(hardware.get('device_count'))} |",
              f"| torch | {_text(hardware.get('torch'))} |",
              f"| wall time (fit) | {_fit_time(metrics)} |",
              f"| training images/s | {_throughput(metrics)} |",
              f"| git commit | {_text(metrics.get('git_commit'))} |", "",
              "## Checkpoint", "", f"- path: `{ckpt}`", f"- sha256: `{_text(checkpoint_sha256)}`", "",
              "## How to load it", "",
              "```bash",
              f"python -m segframe.eval ckpt={ckpt}  # evaluate it again (eval.split=..., eval.flip=true, ...)",
              f"python -m segframe.predict ckpt={ckpt} input=photos/  # masks and overlays",
              f"python -m segframe.export ckpt={ckpt} format=onnx  # an .onnx file, which load_model also takes",
              "```", "",
              "```python",
              "from segframe import load_model",
              f'model = load_model("{ckpt}")  # or the exported .onnx file',
              'mask = model.predict("photo.jpg")  # HxW uint8 class ids; model.classes names them',
              "```", ""]
    return "\n".join(lines)


def hardware(device_type: str = "cpu", device_count: int = 1) -> dict[str, Any]:
    """The device a run used (GPU name, or the CPU model), how many, and the torch version."""
    import torch

    if device_type == "cuda" and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = cpu_name()
    return {"device": device, "device_count": device_count, "torch": torch.__version__}


def write_model_card(run_dir: Path, config: dict[str, Any], metrics: dict[str, Any],
                     manifest: dict[str, Any] | None = None, train_split: str | None = None,
                     device_type: str = "cpu", device_count: int = 1) -> Path:
    """Write `run_dir`/MODEL_CARD.md (atomically) for a finished training run; returns its path."""
    try:  # a cross-validation fold trains on a union of splits (a+b): split_info sums them
        trained_on = (train_split, split_info(manifest, train_split, "")["num_samples"]) \
            if manifest and train_split else None
    except ManifestError:
        trained_on = None
    ckpt = metrics.get("checkpoint")
    sha = sha256_file(ckpt) if ckpt and Path(ckpt).is_file() else None
    table = (run_dir / "per_class.md").read_text() if (run_dir / "per_class.md").is_file() else ""
    card = render_card(metrics, config, table, sha, hardware(device_type, device_count), trained_on)
    write_text_atomic(run_dir / CARD, card)
    return run_dir / CARD
