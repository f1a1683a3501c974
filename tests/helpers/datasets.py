"""Raw datasets in their real on-disk layouts, written by the tests (VOC 2012, SBD, Kvasir-SEG, and
the image/mask writers under them), and reading converted shards back.

Writers used by one test file only stay in that file (Cityscapes, ADE20K and the folder layout in
test_sources_cityscapes.py, test_sources_ade20k.py and test_sources_folder.py).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from segframe.bench.synthetic import write_sbd_mat  # the tests import it from here; the bench uses it too
from segframe.data.sample import decode_sample
from segframe.data.shards import iter_shard, read_manifest, shard_urls
from segframe.data.sources import voc
from segframe.core.paths import CONF_DIR

H, W = 24, 32  # the size of the Cityscapes, ADE20K, Kvasir-SEG and folder fixtures' images


# --------------------------------------------------------------------------- images and masks


def rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A random (h, w, 3) uint8 image, the same for the same seed."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, fmt: str | None = None, **kw) -> Path:
    """`array` saved as an image file at `path` (folders made; format from the suffix unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, **kw)
    return path


def encoded(array: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    """`array` encoded as an image file's bytes, in memory (PIL's `fmt`, its save options in `kw`)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


# --------------------------------------------------------------------------- converted shards


def raw_samples(shard_dir: Path, split: str) -> dict[str, dict]:
    """key -> raw sample entries (the tar members' bytes, undecoded), for every sample of one split."""
    manifest = read_manifest(shard_dir)
    return {s["__key__"]: s for url, n in shard_urls(manifest, split, shard_dir) for s in iter_shard(url, n)}


def read_split(shard_dir: Path, split: str, num_classes: int) -> dict[str, tuple[dict, np.ndarray, np.ndarray, dict]]:
    """key -> (raw sample entries, image, mask, meta), for every sample of one split."""
    return {key: (sample, *decode_sample(sample, num_classes)) for key, sample in raw_samples(shard_dir, split).items()}


def nothing_written(shard_dir: Path) -> None:
    """Assert that a failed conversion into `shard_dir` left nothing behind but its released lock."""
    assert not shard_dir.exists()
    if shard_dir.parent.exists():
        leftovers = [p.name for p in shard_dir.parent.iterdir() if p.name.startswith(f".{shard_dir.name}.")]
        assert leftovers in ([], [f".{shard_dir.name}.lock"])  # the (released) conversion lock may stay


def load_data_yaml(name: str):
    """conf/data/<name>.yaml as it is on disk (not composed)."""
    return OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")


# --------------------------------------------------------------------------- Kvasir-SEG

KVASIR_IDS = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0s690hkp960855tjuaqvv0",
              "cju0sr5ghl0nd08789uzf1raf", "cju0sxqiclckk08551ycbwhno", "cju0t4oil7vzk099370nun5h9"]


def polyp(seed: int) -> np.ndarray:
    """A 0/255 (H, W) mask of one ellipse."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.integers(8, 16), rng.integers(10, 22)
    ry, rx = rng.integers(4, 8), rng.integers(5, 10)
    yy, xx = np.mgrid[:H, :W]
    return ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.uint8) * 255


def make_kvasir(root: Path, ids=KVASIR_IDS) -> dict[str, tuple[Path, Path, np.ndarray]]:
    """Kvasir-SEG/images/<id>.jpg + masks/<id>.jpg: JPEG-compressed 0/255 masks, some saved as RGB
    like the real ones."""
    made = {}
    for i, sample_id in enumerate(ids):
        image = save(root / "images" / f"{sample_id}.jpg", rgb(i), "JPEG", quality=85)
        clean = polyp(i)
        mask_array = np.repeat(clean[..., None], 3, axis=2) if i % 2 else clean
        mask = save(root / "masks" / f"{sample_id}.jpg", mask_array, "JPEG", quality=75)
        made[sample_id] = (image, mask, clean)
    return made


# --------------------------------------------------------------------------- VOC 2012 and SBD

VOC_H, VOC_W = 30, 44  # the size of the VOC and SBD fixtures' images

# VOC-aug's four lists (VOC train / val, SBD train / val): every region of their Venn diagram holds
# at least one id
PT = ["pt_only", "pt_bt", "pt_bv"]
PV = ["pv_only", "pv_bt", "pv_bv", "pv_bt_bv"]
BT = ["bt_only", "pt_bt", "pv_bt", "pv_bt_bv"]
BV = ["bv_only", "pt_bv", "pv_bv", "pv_bt_bv"]


def voc_image(path: Path, seed: int) -> None:
    """A random VOC_H x VOC_W JPEG."""
    save(path, rgb(seed, VOC_H, VOC_W), "JPEG")


def voc_label(value: int, seed: int) -> np.ndarray:
    """Background with a block of class `value` and a void (255) outline, as VOC draws it."""
    m = np.zeros((VOC_H, VOC_W), np.uint8)
    y, x = 4 + seed % 5, 6 + seed % 7
    m[y:y + 12, x:x + 15] = 255
    m[y + 1:y + 11, x + 1:x + 14] = value
    return m


def voc_palette_png(path: Path, mask: np.ndarray) -> None:
    """A palette PNG like VOC's: pixel values are palette indices; the palette is the VOC colour map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(mask, mode="P")
    flat = [c for colour in voc.PALETTE for c in colour]
    im.putpalette(flat + [224, 224, 192] * (256 - len(voc.PALETTE)))  # VOC's void colour
    im.save(path)


def make_voc(root: Path, train: list[str], val: list[str], value: int = 1) -> Path:
    """VOCdevkit/VOC2012 with JPEGImages, SegmentationClass and ImageSets/Segmentation lists."""
    base = root / "VOCdevkit" / "VOC2012"
    for i, image_id in enumerate(sorted(set(train) | set(val))):
        voc_image(base / "JPEGImages" / f"{image_id}.jpg", i)
        voc_palette_png(base / "SegmentationClass" / f"{image_id}.png", voc_label(value, i))
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in train + val))
    return base


def make_sbd(root: Path, train: list[str], val: list[str], value: int = 2) -> Path:
    """benchmark_RELEASE/dataset with img/, cls/*.mat and train.txt / val.txt."""
    base = root / "benchmark_RELEASE" / "dataset"
    for i, image_id in enumerate(sorted(set(train) | set(val))):
        voc_image(base / "img" / f"{image_id}.jpg", 100 + i)
        seg = voc_label(value, i)
        seg[seg == 255] = 0  # SBD has no void pixels
        write_sbd_mat(base / "cls" / f"{image_id}.mat", seg)
    (base / "inst").mkdir(exist_ok=True)  # instance labels exist in the release; not read
    (base / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (base / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return base
