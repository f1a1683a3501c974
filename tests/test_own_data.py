"""Your own data the way a user meets it: the "Your own data" commands of docs/datasets.md, pasted as they are
(with the fixture's paths), through the real CLI, for the three mask styles users bring: binary 0/255
PNGs, RGB colour-coded masks, and palette PNGs from an annotation tool. Every command a message
advises is run as printed."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.cli import REPO, ok, run_cli

# a tiny model and batch on top of the docs' lines: the same commands, sized for a test
SMALL = ["model.backbone=resnet18", "model.pretrained=false", "data.crop_size=32", "datamodule.batch_size=4",
         "datamodule.eval_batch_size=4", "datamodule.num_workers=0", "report.num_images=2"]
SIZE = (40, 48)


def readme_commands() -> list[str]:
    """The command lines of the "Your own data" block of docs/datasets.md."""
    text = (REPO / "docs" / "datasets.md").read_text()
    section = text[text.index("## Your own data"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[:block.index("```")]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("python -m segframe.")]


def run(command: str, env: dict, cwd: Path, *more: str) -> subprocess.CompletedProcess:
    """A pasted command line: `python -m segframe.X ...` split as a shell would, run by this Python."""
    words = shlex.split(command)
    assert words[:2] == ["python", "-m"] and words[2].startswith("segframe."), command
    return run_cli(words[2].removeprefix("segframe."), *words[3:], *more, cwd=cwd, env=env)


def images(root: Path, n: int = 12) -> list[np.ndarray]:
    """Images with one bright rectangle each; returns where the rectangles are (True inside)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    inside = []
    for i in range(n):
        img = rng.integers(0, 60, (*SIZE, 3), dtype=np.uint8)
        m = np.zeros(SIZE, bool)
        y, x = rng.integers(4, 24), rng.integers(4, 30)
        m[y:y + 12, x:x + 14] = True
        img[m] = [200, 80, 80]
        Image.fromarray(img).save(root / "images" / f"cell{i:02d}.png")
        inside.append(m)
    return inside


def pasted(command: str, root: Path, run_dir: Path | None = None) -> str:
    command = command.replace("/path/to/cells", str(root)).replace("/path/to/new/images", str(root / "images"))
    if run_dir is not None:
        best = next((run_dir / "checkpoints").glob("best-epoch*.ckpt"))
        command = command.replace("RUN/checkpoints/best-epoch001.ckpt", str(best))
    return command


def advised(output: str, prefix: str = "python -m segframe.convert") -> list[str]:
    """Command lines a message advises: on a line of their own, or between backticks."""
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith(prefix)]
    return lines + re.findall(r"`(" + re.escape(prefix) + r"[^`]*)`", output)


def palette_of(png: Path, n: int) -> list[list[int]]:
    colours = Image.open(png).getpalette()
    return [colours[3 * i:3 * i + 3] for i in range(n)]


def use(commands: list[str], root: Path, tmp_path: Path, env: dict, name: str, classes: list[str],
        colours: list[list[int]]) -> None:
    """The docs' commands after the convert: browse, train 2 epochs, eval, predict; the outputs
    carry the dataset's class names and colours."""
    browse, train, evaluate, predict = commands[1:]
    assert "browse-" in ok(run(pasted(browse.replace("cells", name), root), env, tmp_path,
                               f"hydra.run.dir={tmp_path / 'browse'}"))
    run_dir = tmp_path / "run"
    ok(run(pasted(train.replace("cells", name), root), env, tmp_path, *SMALL, f"hydra.run.dir={run_dir}"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"] == name and list(metrics["per_class"]) == classes and metrics["epochs"] == 2
    assert all(c in (run_dir / "per_class.md").read_text() for c in classes)
    out = ok(run(pasted(evaluate.replace("cells", name), root, run_dir), env, tmp_path, "datamodule.num_workers=0",
                 f"hydra.run.dir={tmp_path / 'eval'}"))
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["dataset"] == name and classes[-1] in out
    ok(run(pasted(predict, root, run_dir), env, tmp_path, f"output={tmp_path / 'predicted'}",
           f"hydra.run.dir={tmp_path / 'predict'}"))
    masks = sorted((tmp_path / "predicted").glob("*_mask.png"))
    assert len(masks) == 12 and palette_of(masks[0], len(colours)) == colours


def test_the_docs_say_before_the_commands_how_to_train_offline():
    """The train line downloads VGG16 weights: a user without network must learn the option before
    running it, not from its error."""
    text = (REPO / "docs" / "datasets.md").read_text()
    before = text[text.index("## Your own data"):]
    before = before[:before.index("```bash")]
    assert "Offline" in before and "model.pretrained=/path/to/vgg16-397923af.pth" in before
    assert "model.pretrained=false" in before


@pytest.mark.slow  # a CLI end-to-end run (>15 s): CI runs it with the slow set
def test_binary_masks_the_advised_commands_work_as_pasted(tmp_path):
    """0/255 masks converted as the docs' first line says: the converter warns and prints a command,
    training refuses and prints one; both run as printed; then data=cells serves every command."""
    root, env = tmp_path / "cells", {"SEGFRAME_DATA": str(tmp_path / "data")}
    for i, m in enumerate(images(root)):
        Image.fromarray((m * 255).astype(np.uint8)).save(root / "masks" / f"cell{i:02d}.png")
    commands = readme_commands()
    assert len(commands) == 5 and "data=folder data.name=cells" in commands[0]

    first = ok(run(pasted(commands[0], root), env, tmp_path))
    assert "classes ['cell'] have no labelled pixels" in first
    described = tmp_path / "data" / "conf" / "data" / "cells.yaml"
    assert described.is_file() and "python -m segframe.train data=cells" in first
    refused = run(pasted(commands[2], root), env, tmp_path, *SMALL)
    assert refused.returncode == 1 and "data.allow_empty_classes=true" in refused.stderr
    (from_train,) = advised(refused.stderr)
    (from_convert,) = advised(first)
    assert '"data.label_map={255: 1}"' in from_train and "'data.label_map={255: 1}'" in from_convert
    # training's advice alone (data=cells plus the map) must lead somewhere: it writes the map into
    # cells.yaml, says so, and the next `train data=cells` trains (it used to refuse the shards as
    # converted with another label_map, and advise a convert without it: a loop)
    out = ok(run(from_train, env, tmp_path))
    assert "no labelled pixels" not in out and "converted cells" in out
    assert f"updated {described} (" in out and "label_map: None -> {255: 1}" in out
    assert "label_map:\n  255: 1" in described.read_text()
    assert "'data.label_map={255: 1}' overwrite=true" in described.read_text()  # the header: what wrote it
    trained = run(pasted(commands[2], root), env, tmp_path, *SMALL, "trainer.max_steps=1",
                  f"hydra.run.dir={tmp_path / 'one-step'}")
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = ok(run(from_convert, env, tmp_path))  # the converter's own advice, as printed, works too
    assert "no labelled pixels" not in out and "converted cells" in out
    manifest = json.loads((tmp_path / "data" / "cells" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["class_pixels"][1] > 0 and "label_map:\n  255: 1" in described.read_text()
    use(commands, root, tmp_path, env, "cells", ["background", "cell"], manifest["palette"])


@pytest.mark.slow
def test_rgb_colour_coded_masks_end_to_end(tmp_path):
    root, env = tmp_path / "rgbcells", {"SEGFRAME_DATA": str(tmp_path / "data")}
    colours = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    for i, m in enumerate(images(root)):
        rgb = np.zeros((*SIZE, 3), np.uint8)
        rgb[m] = colours[1 + i % 2]
        rgb[:2] = 255  # a void border, white
        Image.fromarray(rgb).save(root / "masks" / f"cell{i:02d}.png")
    commands = [c.replace("data.name=cells", "data.name=rgbcells") for c in readme_commands()]
    convert = pasted(commands[0], root).replace("[background,cell]", "[background,red_cell,green_cell]")
    convert += ' "data.palette=[[0,0,0],[255,0,0],[0,255,0]]" "data.void_colours=[[255,255,255]]"'
    ok(run(convert, env, tmp_path))
    manifest = json.loads((tmp_path / "data" / "rgbcells" / "manifest.json").read_text())
    assert manifest["palette"] == colours and manifest["splits"]["train"]["ignore_pixels"] > 0
    use(commands, root, tmp_path, env, "rgbcells", ["background", "red_cell", "green_cell"], colours)


@pytest.mark.slow
def test_palette_png_masks_from_an_annotation_tool_end_to_end(tmp_path):
    """Palette PNGs: indices are the classes, the masks' colours become the dataset's palette; the
    split comes from the user's own lists."""
    root, env = tmp_path / "tooled", {"SEGFRAME_DATA": str(tmp_path / "data")}
    colours = [[0, 0, 0], [200, 30, 30], [30, 200, 30]]
    for i, m in enumerate(images(root)):
        mask = Image.fromarray((m * (1 + i % 2)).astype(np.uint8), mode="P")
        mask.putpalette(sum(colours, []) + [0] * (768 - 9))
        mask.save(root / "masks" / f"cell{i:02d}.png")
    (root / "train.txt").write_text("\n".join(f"cell{i:02d}" for i in range(9)))
    (root / "val.txt").write_text("\n".join(f"cell{i:02d}" for i in range(9, 12)))
    commands = [c.replace("data.name=cells", "data.name=tooled") for c in readme_commands()]
    convert = pasted(commands[0], root).replace("[background,cell]", "[background,nucleus,membrane]")
    ok(run(convert + ' "data.split_lists={train: train.txt, val: val.txt}"', env, tmp_path))
    manifest = json.loads((tmp_path / "data" / "tooled" / "manifest.json").read_text())
    assert manifest["palette"] == colours
    assert {s: v["num_samples"] for s, v in manifest["splits"].items()} == {"train": 9, "val": 3}
    use(commands, root, tmp_path, env, "tooled", ["background", "nucleus", "membrane"], colours)


def test_a_described_dataset_may_not_take_a_shipped_name(tmp_path):
    res = run_cli("convert", "data=folder", "data.name=voc", f"data.root={tmp_path}", "data.classes=[a,b]",
                  env={"SEGFRAME_DATA": str(tmp_path / "data")}, cwd=tmp_path)
    assert res.returncode == 1 and "segframe ships a dataset of that name" in res.stderr
    assert "data.name=my_voc" in res.stderr and not (tmp_path / "data").exists()


def test_training_repeats_the_empty_class_warning_and_refuses_background_only(caplog):
    import logging

    from omegaconf import OmegaConf

    from segframe.core.config import ConfigError
    from segframe.data.preparation import check_labelled

    def manifest(pixels: list[int], ignored: int) -> dict:
        return {"classes": ["background", "cell", "debris"],
                "splits": {"train": {"num_samples": 4, "shards": [], "class_pixels": pixels, "ignore_pixels": ignored}}}

    folder = OmegaConf.create({"name": "cells", "shard_dir": "/x/cells", "label_map": None, "allow_empty_classes": False})
    with caplog.at_level(logging.WARNING, logger="segframe"):
        check_labelled(folder, manifest([900, 50, 0], 0), "train")  # one class empty: train, but say so
    assert "classes ['debris'] of cells have no labelled pixels in its train split" in caplog.text
    with pytest.raises(ConfigError, match=r'"data\.label_map=\{255: 1\}" overwrite=true`.*'
                                          r"pass data\.allow_empty_classes=true"):
        check_labelled(folder, manifest([900, 0, 0], 120), "train")
    check_labelled(OmegaConf.merge(folder, {"allow_empty_classes": True}), manifest([900, 0, 0], 120), "train")
    shipped = OmegaConf.create({"name": "kvasir_seg", "shard_dir": "/x/k"})  # no such keys in its config
    with pytest.raises(ConfigError, match=r"check data\.classes.*pass \+data\.allow_empty_classes=true"):
        check_labelled(shipped, manifest([900, 0, 0], 0), "train")
