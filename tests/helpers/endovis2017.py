"""EndoVis 2017 robotic instrument segmentation training data in its real layout and at its real
size (1920x1080 PNG frames), for the converter's tests and convert -> train -> eval -> predict runs.

    from helpers.endovis2017 import make_endovis2017
    root = make_endovis2017(tmp_path / "endovis2017")   # -> root; data.root=root
    EndoVis2017Source(str(root))                          # the 8 splits instrument_dataset_1..8

`make_endovis2017(root, datasets=DATASETS, frames=2, size=(1080, 1920), variants=True, odd_size=(),
test_frames=2)` writes `train/instrument_dataset_N/left_frames/frame000.png ...` and, per dataset, the
ground-truth folders of `ground_truth_folders(N, variants)` with one mask per frame (0 background, 10
shaft, 20 wrist, 30 claspers), plus `test/instrument_dataset_1/left_frames/` (unlabelled, for predict).
The converter needs all 8 datasets: fewer gives its "dataset not found" message. `odd_size`: sample
ids (`"instrument_dataset_2/frame001"`) whose first mask is written 8 pixels shorter and narrower (a
bad sample). The 8x2 default writes 18 frames and 48 masks in 2-3 s (PNG level 1, on a 2-core machine).

Every label variant of the real data is there with `variants=True` (the default): a mask saved as
3 channels (`THREE_CHANNEL`), a folder without `_labels` (dataset 3), Other_labels overlapping a
non-Other instrument (dataset 1 and 2, Other later in sorted order), two overlapping non-Other
instruments, a Maryland_Bipolar_Forceps_labels folder (dataset 1), the value 40 (`ODD_VALUE`, neither
shaft, wrist nor claspers) and all three part values in every mask. Instrument
blobs lie partly inside and partly outside the 1280x1024 crop at row 28, column 320, and every
non-Other mask marks the crop's corner: (28, 320) claspers, (27, 319), (27, 320), (28, 319) wrist.
`variants=False`: one single-channel `<Instrument>_labels` folder per dataset, values 10/20/30 only.
Frames are black outside the crop and a smooth gradient inside, red 180 + (5N + f) % 76 (so a BGR swap
shows). Another `size` scales the blobs and the crop window alike (convert such frames with
crop_frames=False: the crop needs 1920x1080).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

DATASETS = tuple(range(1, 9))
FULL = (1080, 1920)
ODD_VALUE = 40
# ground-truth folders per dataset, like the real ones (Maryland, Other, a name without _labels)
GROUND_TRUTH = {
    1: ("Left_Prograsp_Forceps_labels", "Maryland_Bipolar_Forceps_labels", "Other_labels",
        "Right_Prograsp_Forceps_labels"),
    2: ("Left_Prograsp_Forceps_labels", "Other_labels", "Right_Prograsp_Forceps_labels"),
    3: ("Left_Large_Needle_Driver", "Right_Large_Needle_Driver_labels"),
    4: ("Large_Needle_Driver_Left_labels", "Large_Needle_Driver_Right_labels", "Prograsp_Forceps_labels"),
    5: ("Bipolar_Forceps_labels", "Grasping_Retractor_labels", "Vessel_Sealer_labels"),
    6: ("Left_Large_Needle_Driver_labels", "Monopolar_Curved_Scissors_labels", "Prograsp_Forceps_labels"),
    7: ("Left_Bipolar_Forceps_labels", "Right_Vessel_Sealer_labels"),
    8: ("Bipolar_Forceps_labels", "Left_Grasping_Retractor_labels", "Monopolar_Curved_Scissors_labels",
        "Right_Grasping_Retractor_labels"),
}
PLAIN = {1: "Bipolar_Forceps_labels", 2: "Prograsp_Forceps_labels", 3: "Large_Needle_Driver_labels",
         4: "Vessel_Sealer_labels", 5: "Grasping_Retractor_labels", 6: "Monopolar_Curved_Scissors_labels",
         7: "Prograsp_Forceps_labels", 8: "Bipolar_Forceps_labels"}
THREE_CHANNEL = {(1, "Right_Prograsp_Forceps_labels"), (5, "Vessel_Sealer_labels")}  # masks saved as BGR
# an instrument's top-left corner in the full frame: consecutive ones overlap, the first straddles the
# crop's top-left corner, the last its right and bottom edges
CORNERS = ((10, 250), (240, 670), (470, 1090), (700, 1510))
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def ground_truth_folders(dataset: int, variants: bool = True) -> tuple[str, ...]:
    return GROUND_TRUTH[dataset] if variants else (PLAIN[dataset],)


def frame_name(frame: int) -> str:
    return f"frame{frame:03d}.png"


def frame_image(dataset: int, frame: int, size: tuple[int, int] = FULL) -> np.ndarray:
    """The RGB frame: black outside the (scaled) crop, inside red 180 + (5*dataset + frame) % 76 with green
    and blue gradients."""
    h, w = size
    top, bottom = round(28 * h / 1080), round(1052 * h / 1080)
    left, right = round(320 * w / 1920), round(1600 * w / 1920)
    image = np.zeros((h, w, 3), np.uint8)
    image[top:bottom, left:right, 0] = 180 + (5 * dataset + frame) % 76
    image[top:bottom, left:right, 1] = ((np.arange(top, bottom) + 7 * frame + 11 * dataset) % 256)[:, None]
    image[top:bottom, left:right, 2] = (np.arange(left, right) // 2 + 13 * dataset) % 256
    return image


def instrument_mask(dataset: int, frame: int, k: int, other: bool = False, variants: bool = True,
                    size: tuple[int, int] = FULL) -> np.ndarray:
    """The mask of the k-th ground-truth folder: shaft (10) above wrist (20) above claspers (30), at
    CORNERS[(k + dataset) % 4] moved a little per dataset and frame (scaled to `size`); with variants, a
    band of ODD_VALUE in the wrist and (non-Other) the crop-corner marks."""
    h, w = size
    sy, sx = h / 1080, w / 1920
    y0, x0 = CORNERS[(k + dataset) % 4]
    y0, x0 = y0 + 3 * frame + 2 * dataset, x0 + 5 * frame + 3 * dataset

    def box(rows: tuple[int, int], cols: tuple[int, int]) -> tuple[slice, slice]:
        return (slice(round((y0 + rows[0]) * sy), round((y0 + rows[1]) * sy)),
                slice(round((x0 + cols[0]) * sx), round((x0 + cols[1]) * sx)))

    mask = np.zeros(size, np.uint8)
    mask[box((0, 300), (0, 500))] = 10
    mask[box((300, 380), (0, 500))] = 20
    mask[box((380, 460), (20, 480))] = 30
    if variants:
        mask[box((310, 330), (200, 300))] = ODD_VALUE
        if not other and h > 28 and w > 320:
            mask[27:29, 319:321] = 20
            mask[28, 320] = 30
    return mask


def make_endovis2017(root: Path, datasets: Sequence[int] = DATASETS, frames: int = 2,
                     size: tuple[int, int] = FULL, variants: bool = True, odd_size: Iterable[str] = (),
                     test_frames: int = 2) -> Path:
    """The raw layout under `root` (see the module); returns root."""
    root, odd = Path(root), set(odd_size)
    for n in datasets:
        folder = root / "train" / f"instrument_dataset_{n}"
        _write_frames(folder / "left_frames", n, frames, size)
        for k, name in enumerate(ground_truth_folders(n, variants)):
            gt = folder / "ground_truth" / name
            gt.mkdir(parents=True, exist_ok=True)
            for f in range(frames):
                mask = instrument_mask(n, f, k, "Other" in name, variants, size)
                if k == 0 and f"instrument_dataset_{n}/{frame_name(f)[:-4]}" in odd:
                    mask = mask[:-8, :-8]
                if variants and (n, name) in THREE_CHANNEL:
                    mask = np.repeat(mask[:, :, None], 3, axis=2)
                Image.fromarray(mask).save(gt / frame_name(f), compress_level=1)  # PIL: faster than cv2 here
    if test_frames:
        _write_frames(root / "test" / "instrument_dataset_1" / "left_frames", 9, test_frames, size)
    return root


def _write_frames(folder: Path, dataset: int, frames: int, size: tuple[int, int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(frames):
        assert cv2.imwrite(str(folder / frame_name(f)), frame_image(dataset, f, size)[:, :, ::-1], _PNG)
