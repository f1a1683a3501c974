"""Look at a converted dataset: a PNG grid of samples with their masks overlaid in the
dataset palette, and a bar chart of the per-class pixel counts the manifest records."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segframe.data.colours import overlay
from segframe.data.manifest import read_manifest, shard_urls, split_info
from segframe.data.sample import decode_sample
from segframe.data.shard_reader import iter_shard
from segframe.data.tasks import view

TILE = 256
CAPTION = 14


def _tile(image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], caption: str) -> Image.Image:
    picture = Image.fromarray(overlay(image, mask, palette))
    scale = min(TILE / picture.width, TILE / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    picture = picture.resize(size, Image.Resampling.NEAREST)  # nearest keeps class edges crisp
    tile = Image.new("RGB", (TILE, TILE + CAPTION), (255, 255, 255))
    tile.paste(picture, ((TILE - picture.width) // 2, (TILE - picture.height) // 2))
    ImageDraw.Draw(tile).text((2, TILE + 1), caption[:40], fill=(0, 0, 0))
    return tile


def browse(shard_dir: str | os.PathLike, split: str | None, count: int, out_path: str | os.PathLike,
           columns: int = 4, task: str | None = None) -> list[Path]:
    """Write `<out_path>` (a grid of the first `count` samples of `split`, default: the first split)
    and `<stem>-class-pixels.png` next to it, labelled as `task` reads them (data.task, for a
    conversion that serves several). Returns the files written."""
    manifest = read_manifest(shard_dir)
    split = split or next(iter(manifest["splits"]))
    info = split_info(manifest, split, shard_dir)  # names the available splits when `split` is not one
    labels = view(manifest, task)
    palette, classes = labels.palette, labels.classes
    tiles: list[Image.Image] = []
    present = np.zeros(256, dtype=bool)
    for url, expected in shard_urls(manifest, split, shard_dir):
        for sample in iter_shard(url, expected):
            image, mask, meta = decode_sample(sample, len(manifest["classes"]))
            mask = labels.relabel(mask)
            present[np.unique(mask)] = True
            tiles.append(_tile(image, mask, palette, str(meta.get("id", sample["__key__"]))))
            if len(tiles) >= count:
                break
        if len(tiles) >= count:
            break
    columns = max(1, min(columns, len(tiles)))
    legend = _legend([(classes[i], palette[i]) for i in range(len(classes)) if present[i]], columns * TILE)
    rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * TILE, rows * (TILE + CAPTION) + legend.height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * TILE, (i // columns) * (TILE + CAPTION)))
    grid.paste(legend, (0, rows * (TILE + CAPTION)))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    chart = out.with_name(f"{out.stem}-class-pixels.png")
    title = f"{manifest['name']} {split}" + (f" ({task})" if task else "")
    class_pixels_plot(classes, labels.pixels(info["class_pixels"])[0], title, chart)
    return [out, chart]


def _legend(entries: list[tuple[str, Sequence[int]]], width: int) -> Image.Image:
    """Colour swatches with class names, wrapped to the grid width (void = hatched white)."""
    entries = entries + [("void (255)", (255, 255, 255))]
    cell = 150
    per_row = max(1, width // cell)
    legend = Image.new("RGB", (width, 18 * (-(-len(entries) // per_row)) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, (name, colour) in enumerate(entries):
        x, y = (i % per_row) * cell + 4, (i // per_row) * 18 + 4
        draw.rectangle((x, y, x + 12, y + 12), fill=tuple(int(c) for c in colour), outline=(0, 0, 0))
        draw.text((x + 16, y), name[:20], fill=(0, 0, 0))
    return legend


def class_pixels_plot(classes: Sequence[str], pixels: Sequence[int], title: str, path: Path) -> None:
    """Share of labelled pixels per class (log scale: rare classes stay visible)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(pixels, dtype=np.float64)
    share = counts / max(counts.sum(), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.22 * len(classes) + 2), 4))
    ax.bar(range(len(classes)), np.maximum(share, 1e-9))
    ax.set_yscale("log")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_ylabel("share of labelled pixels")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
