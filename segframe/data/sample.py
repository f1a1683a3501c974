"""The sample contract: what one training example looks like inside a shard.

A sample is a dict of bytes written to a WebDataset tar:
  __key__   image id with every char outside [A-Za-z0-9_-] replaced by "_"
            (WebDataset splits a key at its first dot)
  jpg|png   the source image's own bytes when already JPEG/PNG, else PNG re-encoded
  seg.png   single-channel 8-bit PNG of class indices 0..C-1, IGNORE_INDEX = void
  json      {"id", "source", "split", "height", "width"}

Decoding uses PIL, plus simplejpeg (libjpeg-turbo straight into a numpy array) for full-size
JPEGs: never pickle, never torch.load, and masks are read as raw indices (palette PNGs must not
go through an RGB conversion).
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from segframe.core.errors import SampleError

IGNORE_INDEX = 255
IMAGE_ENTRIES = ("jpg", "png")  # a shard sample's image entry: the source file's own JPEG/PNG bytes
# image files the converters of user folders pair with masks
IMAGE_FILE_EXTS = ("jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp")
# every image file predict takes from a folder: the raster formats decode_image opens (PIL's own readers;
# webp and avif need PIL built with them). The one list: predict's folder listing and its messages use it.
READABLE_IMAGE_EXTS = IMAGE_FILE_EXTS + ("jpe", "jfif", "gif", "apng", "dib", "ppm", "pgm", "pbm", "pnm", "tga",
                                         "qoi", "avif")
MASK_EXT = "seg.png"
META_EXT = "json"
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass
class RawSample:
    """What a converter hands to the shard writer for one image."""

    id: str
    image: bytes | np.ndarray  # encoded file bytes, or an HxWx3 uint8 array
    mask: np.ndarray | bytes  # HxW uint8 class indices, or an L/P PNG's bytes whose values are the indices
    source: str = ""  # where it came from (file path or generator), for error messages


def make_key(sample_id: str) -> str:
    return _KEY_UNSAFE.sub("_", sample_id)


def image_format(data: bytes) -> str | None:
    """'jpg' / 'png' from the magic bytes, None for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return None


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_image(data: bytes, name: str = "image", exif_transpose: bool = False) -> np.ndarray:
    """Encoded bytes -> HxWx3 uint8 RGB; `exif_transpose`: as a viewer shows it (phone photos)."""
    return _decode_rgb(data, name, exif_transpose=exif_transpose)[0]


def decode_image_reduced(data: bytes, name: str, at_least: tuple[int, int] | None
                         ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """(HxWx3 uint8 RGB, k, (full height, full width)): a JPEG decoded at libjpeg's DCT scale 1/k
    (k = 1, 2, 4, 8), the smallest that still has `at_least` (height, width) pixels; other formats,
    and `at_least=None`, at k = 1. The inverse DCT at 1/k skips most of the decode's work, not only
    pixels. Pixel (i, j) of the result covers source pixels [k*i, k*i + k) x [k*j, k*j + k), so its
    centre is source coordinate k*(i + 0.5) - 0.5: callers fold k into their geometry."""
    return _decode_rgb(data, name, at_least=at_least)


def pil_rgb(im: Image.Image, name: str, exif_transpose: bool = False) -> np.ndarray:
    """An opened PIL image as segframe reads every image: HxWx3 uint8 RGB, any 8-bit mode (L, P, LA,
    RGBA, CMYK, YCbCr...) converted by PIL, 16-bit and float refused (_check_depth); `exif_transpose`:
    turned upright as a viewer shows it (phone photos). decode_image and the Python API both use it."""
    _check_depth(im, name)
    if exif_transpose:
        from PIL import ImageOps

        im = ImageOps.exif_transpose(im)
    return np.asarray(im.convert("RGB"))


def decode_problem(exc: Exception) -> str:
    """What went wrong in PIL, in words without object reprs: PIL names the BytesIO it read from
    ("cannot identify image file <_io.BytesIO object at 0x7f...>"), an address that helps nobody."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format (not an image, or a format PIL cannot read)"
    text = _OBJECT_REPR.sub("", str(exc)).strip(" :") or type(exc).__name__
    damaged = any(word in text.lower() for word in ("truncated", "broken"))
    return f"damaged or truncated ({text})" if damaged else text


_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")


def _decode_rgb(data: bytes, name: str, exif_transpose: bool = False, at_least: tuple[int, int] | None = None
                ) -> tuple[np.ndarray, int, tuple[int, int]]:
    """decode_image and decode_image_reduced: (RGB array, DCT reduction k, full (height, width))."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_depth(im, name)
            width, height = im.size
            k = _draft(im, at_least) if at_least is not None else 1
            if not exif_transpose and k == 1 and im.format == "JPEG" and im.mode in _TURBO_MODES:
                image = _turbo_rgb(data, (height, width))
                if image is not None:
                    return image, k, (height, width)
            return pil_rgb(im, name, exif_transpose), k, (height, width)
    except SampleError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SampleError(f"{name}: cannot decode image: {decode_problem(exc)}") from exc


# JPEG colour models whose RGB simplejpeg and PIL compute alike (CMYK/YCCK differ: PIL's conversion)
_TURBO_MODES = ("RGB", "L")


def _turbo_rgb(data: bytes, shape: tuple[int, int]) -> np.ndarray | None:
    """A JPEG already opened by PIL (its header, depth and decompression-bomb checks passed) decoded
    by libjpeg-turbo into a numpy array; None where PIL must decide. PIL's own decode is as fast, but
    its conversion to numpy (tobytes) costs as much again, ~0.8 ms for 500x375. Same library and
    settings as PIL's (accurate integer DCT, fancy upsampling), so the pixels are PIL's
    (tests/test_sample_decode.py). `strict` refuses every stream libjpeg merely warns about: those,
    and anything else that fails, go to PIL, which raises for what it cannot read and decodes what
    it decodes today. simplejpeg is the stricter of the two: of 2000 randomly corrupted JPEGs it
    accepted none that PIL refused (the tests repeat this on 120)."""
    try:
        image = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except Exception:  # noqa: BLE001 (PIL decides and names the problem)
        return None
    return image if image.shape[:2] == shape else None


def _draft(im: Image.Image, at_least: tuple[int, int]) -> int:
    """Ask a JPEG (nothing else can) for its smallest DCT scale keeping `at_least` (h, w); returns k.
    draft answers (mode, box), box being the full image in reduced pixels: full width / its width = k."""
    if im.format != "JPEG":
        return 1
    width = im.size[0]  # before draft shrinks im.size
    drafted = im.draft("RGB", (max(1, at_least[1]), max(1, at_least[0])))
    return round(width / drafted[1][2]) if drafted else 1


# PIL scales 2- and 4-bit greyscale PNGs to 0..255 (as the PNG spec says for display); a mask's
# stored values are class ids, so they are scaled back
_LOW_BIT_SCALE = {"L;2": 85, "L;4": 17}


def mask_indices(im: Image.Image, name: str = "mask") -> np.ndarray:
    """The class ids an opened (not yet loaded) mask image stores: 8-bit L, or P read as palette
    indices (never through RGB), 1-bit as 0/1, low-bit greyscale PNGs unscaled. HxW uint8."""
    rawmode = im.tile[0].args if im.tile and isinstance(im.tile[0].args, str) else im.mode
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode not in ("L", "P"):
        raise SampleError(f"{name}: mask has mode {im.mode!r}, expected a single-channel index or palette image")
    values = np.asarray(im, dtype=np.uint8)
    scale = _LOW_BIT_SCALE.get(rawmode)
    return values // scale if scale else values.copy()


def is_8bit_index_png(im: Image.Image) -> bool:
    """An opened image already in the shard's mask format (8-bit L or P PNG): its bytes can be kept."""
    return im.format == "PNG" and im.mode in ("L", "P") and bool(im.tile) and im.tile[0].args in ("L", "P")


def decode_mask(data: bytes, name: str = "mask") -> np.ndarray:
    """PNG bytes -> HxW uint8 class indices, read as indices (mode L or P), never via RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return mask_indices(im, name)
    except SampleError:
        raise
    except Exception as exc:
        raise SampleError(f"{name}: cannot decode mask: {decode_problem(exc)}") from exc


def check_image(data: bytes, name: str = "image") -> tuple[int, int]:
    """Decode an encoded image enough to catch corrupt or truncated files; returns (height, width).
    JPEGs decode through libjpeg's 1/8 DCT scaling: every entropy-coded byte is still read, so a
    truncated or broken stream fails as in a full decode, at a fraction of the cost."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            _check_depth(im, name)
            width, height = im.size
            if im.format == "JPEG":
                im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            im.load()
    except SampleError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise SampleError(f"{name}: cannot decode image: {decode_problem(exc)}") from exc
    return height, width


def _check_depth(im: Image.Image, name: str) -> None:
    """Images are 8 bits per channel: a 16-bit or float image would be clipped to 0..255 on reading."""
    if im.mode.startswith("I") or im.mode == "F":
        raise SampleError(f"{name}: image mode {im.mode!r} (16-bit or float) is not supported; segframe reads 8 bits "
                          "per channel: rescale it to 8 bits first")


def check_mask(mask: np.ndarray, num_classes: int, name: str) -> None:
    """Labels must be 0..C-1 or IGNORE_INDEX."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))[:10]
        raise SampleError(
            f"{name}: label values {values} are outside 0..{num_classes - 1} and not {IGNORE_INDEX} (ignore)"
        )


def encode_sample(raw: RawSample, split: str, num_classes: int) -> tuple[dict[str, bytes], np.ndarray]:
    """Validate a RawSample and turn it into shard entries. Returns (entries, mask)."""
    name = raw.source or raw.id
    if isinstance(raw.image, np.ndarray):
        if raw.image.ndim != 3 or raw.image.shape[2] != 3 or raw.image.dtype != np.uint8:
            raise SampleError(f"{name}: image array must be HxWx3 uint8, got {raw.image.shape} {raw.image.dtype}")
        ext, image_bytes, size = "png", encode_png(raw.image), raw.image.shape[:2]
    else:
        ext = image_format(raw.image)
        image_bytes = bytes(raw.image)
        if ext is None:  # e.g. BMP/TIFF: store as PNG so readers only need jpg/png
            decoded = decode_image(raw.image, name)
            ext, image_bytes, size = "png", encode_png(decoded), decoded.shape[:2]
        else:
            size = check_image(image_bytes, name)
    mask_bytes = None
    if isinstance(raw.mask, (bytes, bytearray)):
        # an index/palette PNG is already in the shard's mask format: keep its bytes, no re-encode
        mask_bytes = bytes(raw.mask) if image_format(raw.mask) == "png" else None
        mask = decode_mask(bytes(raw.mask), f"{name} (mask)")
    else:
        mask = np.asarray(raw.mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise SampleError(f"{name}: mask must be HxW uint8, got shape {mask.shape} dtype {mask.dtype}")
    if mask.shape != tuple(size):
        raise SampleError(
            f"{name}: image is {size[1]}x{size[0]} (WxH) but its mask is {mask.shape[1]}x{mask.shape[0]}"
        )
    check_mask(mask, num_classes, name)
    meta = {"id": raw.id, "source": raw.source, "split": split, "height": int(size[0]), "width": int(size[1])}
    entries = {
        "__key__": make_key(raw.id),
        ext: image_bytes,
        MASK_EXT: mask_bytes if mask_bytes is not None else encode_png(mask),
        META_EXT: json.dumps(meta).encode("utf-8"),
    }
    return entries, mask


@dataclass(frozen=True)
class EncodedImage:
    """A sample's image entry left encoded, so that an augmentation can choose how to decode it
    (a JPEG at a reduced DCT scale when it will be shrunk anyway). `shape`: the (height, width) the
    image must have (its mask's); `name`: where it is from, for errors."""

    data: bytes
    name: str
    shape: tuple[int, int]

    def decode(self, at_least: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
        """(image, k): the full image (k = 1), or with `at_least` (h, w) possibly reduced 1/k
        (see decode_image_reduced); either way checked to be as large as its mask."""
        image, k, size = decode_image_reduced(self.data, self.name, at_least)
        if tuple(size) != tuple(self.shape):
            raise SampleError(f"{self.name}: image {tuple(size)} and mask {tuple(self.shape)} differ in size")
        return image, k


def open_sample(sample: dict, num_classes: int | None = None) -> tuple[EncodedImage, np.ndarray, dict]:
    """Shard entries -> (the image still encoded, HxW uint8 mask, meta): every check of
    decode_sample but the image's decode, which EncodedImage.decode does (and checks)."""
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', 'shard')} key {key}"
    ext = next((e for e in IMAGE_ENTRIES if e in sample), None)
    if ext is None or MASK_EXT not in sample or META_EXT not in sample:
        raise SampleError(
            f"{where}: incomplete sample, has {sorted(k for k in sample if not k.startswith('__'))}, "
            f"expected one of {IMAGE_ENTRIES} plus {MASK_EXT!r} and {META_EXT!r}"
        )
    mask = decode_mask(sample[MASK_EXT], f"{where} ({MASK_EXT})")
    try:
        meta = json.loads(sample[META_EXT])
    except ValueError as exc:
        raise SampleError(f"{where}: bad json ({exc})") from exc
    if num_classes is not None:
        check_mask(mask, num_classes, where)
    return EncodedImage(sample[ext], f"{where} ({ext})", mask.shape), mask, meta


def decode_sample(sample: dict, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Shard entries -> (HxWx3 uint8 image, HxW uint8 mask, meta). Only jpg/png/json are read."""
    encoded, mask, meta = open_sample(sample, num_classes)
    image, _ = encoded.decode()
    return image, mask, meta
