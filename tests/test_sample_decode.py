"""decode_image's JPEG fast path (simplejpeg, libjpeg-turbo into numpy) against PIL, the reference:
the same pixels for every JPEG it takes, PIL's behaviour (error or pixels) for every JPEG it leaves."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from segframe.data import sample
from segframe.data.sample import decode_image, decode_sample, open_sample
from segframe.core.errors import SampleError


def _pil(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _smooth(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def _jpeg(array: np.ndarray, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **save)
    return buf.getvalue()


def _spy(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record what the fast path returned (an array, or None for 'PIL decides')."""
    calls: list = []
    real = sample._turbo_rgb

    def spy(data: bytes, shape: tuple[int, int]) -> np.ndarray | None:
        calls.append(real(data, shape))
        return calls[-1]

    monkeypatch.setattr(sample, "_turbo_rgb", spy)
    return calls


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("size", [(375, 500), (17, 31), (1, 1)])
def test_fast_path_gives_pils_pixels(monkeypatch, subsampling, progressive, size):
    calls = _spy(monkeypatch)
    data = _jpeg(_smooth(*size), quality=80, subsampling=subsampling, progressive=progressive)
    image = decode_image(data, "x.jpg")
    assert calls and calls[0] is not None  # the fast path decoded it
    assert image.dtype == np.uint8 and image.shape == (*size, 3)
    np.testing.assert_array_equal(image, _pil(data))


def test_greyscale_jpeg_is_replicated_rgb_like_pil(monkeypatch):
    calls = _spy(monkeypatch)
    data = _jpeg(_smooth(40, 60)[:, :, 0])
    np.testing.assert_array_equal(decode_image(data, "grey.jpg"), _pil(data))
    assert calls[0] is not None


def test_cmyk_jpeg_is_left_to_pil(monkeypatch):
    calls = _spy(monkeypatch)
    buf = io.BytesIO()
    Image.fromarray(_smooth(40, 60)).convert("CMYK").save(buf, "JPEG")
    np.testing.assert_array_equal(decode_image(buf.getvalue(), "cmyk.jpg"), _pil(buf.getvalue()))
    assert calls == []  # PIL's CMYK conversion is not libjpeg's: never offered to the fast path


def test_truncated_jpeg_still_raises_naming_it():
    data = _jpeg(_smooth(120, 160))
    with pytest.raises(SampleError, match=r"shard-7\.tar key a \(jpg\): cannot decode image"):
        decode_image(data[: len(data) // 2], "shard-7.tar key a (jpg)")


def test_streams_libjpeg_only_warns_about_go_to_pil(monkeypatch):
    """Corrupt entropy data that PIL decodes (libjpeg warns) is refused by strict simplejpeg and decoded
    by PIL: the same pixels as before, nothing newly refused. And nothing PIL refuses is accepted."""
    rng = np.random.default_rng(3)
    clean = _jpeg(_smooth(96, 128), quality=90)
    calls = _spy(monkeypatch)
    outcomes = {"fast": 0, "pil": 0, "refused": 0}
    for trial in range(120):
        data = bytearray(clean)
        for _ in range(int(rng.integers(1, 6))):  # flip bytes inside the entropy-coded data
            data[int(rng.integers(len(clean) // 3, len(clean) - 4))] = int(rng.integers(0, 256))
        data = bytes(data)
        calls.clear()
        try:
            reference = _pil(data)
        except Exception:  # noqa: BLE001 (PIL refuses: so must decode_image)
            with pytest.raises(SampleError, match="cannot decode image"):
                decode_image(data, f"trial {trial}")
            outcomes["refused"] += 1
            continue
        np.testing.assert_array_equal(decode_image(data, f"trial {trial}"), reference)
        outcomes["fast" if calls and calls[0] is not None else "pil"] += 1
    assert outcomes["pil"] > 0 and outcomes["fast"] + outcomes["pil"] + outcomes["refused"] == 120


def test_size_disagreeing_with_the_header_goes_to_pil(monkeypatch):
    """A decode whose size is not the header's is never trusted."""
    data = _jpeg(_smooth(30, 40))
    monkeypatch.setattr(sample.simplejpeg, "decode_jpeg", lambda *a, **k: np.zeros((29, 40, 3), np.uint8))
    np.testing.assert_array_equal(decode_image(data, "x.jpg"), _pil(data))


def test_shard_sample_decodes_through_the_fast_path(monkeypatch):
    calls = _spy(monkeypatch)
    image = _smooth(50, 70)
    mask = np.zeros((50, 70), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(mask, "L").save(buf, "PNG")
    entries = {"__key__": "k", "__url__": "s.tar", "jpg": _jpeg(image), "seg.png": buf.getvalue(),
               "json": b'{"id": "k"}'}
    decoded, _, _ = decode_sample(entries, 2)
    np.testing.assert_array_equal(decoded, _pil(entries["jpg"]))
    assert calls[0] is not None
    encoded, _, _ = open_sample(entries, 2)
    np.testing.assert_array_equal(encoded.decode()[0], decoded)
