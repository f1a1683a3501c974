"""The windowed scale-pad-crop (data/window.py) against the albumentations chain it replaces:
the same distribution of scales and crop corners (two-sample KS tests on a few thousand draws),
the same pixels for the same draw, padding 0 / IGNORE_INDEX, image-mask alignment, and the
reduced-DCT JPEG decode."""

from __future__ import annotations

import io
import random

import albumentations as A
import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.stats import ks_2samp

from segframe.data.augment import default_train, seed_train
from segframe.data.sample import IGNORE_INDEX, EncodedImage
from segframe.data.window import Window, WindowedScaleCrop, crop_image, crop_mask, sample_window

DRAWS = 3000
SHAPE = (60, 80)  # small, so that both regimes occur at crop 64: padded (s < ~1.07) and not


def _recorded(chain: A.Compose) -> A.Compose:
    """The same chain, recording its draws (albumentations' save_applied_params)."""
    return A.Compose(chain.transforms, save_applied_params=True, seed=0)


def _chain_window(applied: list, crop: tuple[int, int]) -> Window:
    """The Window an albumentations chain's recorded draw amounts to (corner in scaled pixels)."""
    params = dict(applied)
    scale, source = params["RandomScale"]["scale"], params["RandomScale"]["shape"][:2]
    cropper = params.get("RandomCrop") or params["CenterCrop"]
    pads = params.get("PadIfNeeded") or cropper["pad_params"] or {"pad_top": 0, "pad_left": 0}
    left, top = cropper["crop_coords"][:2]
    scaled = (int(source[0] * scale), int(source[1] * scale))
    return Window(scale, source, scaled, top - pads["pad_top"], left - pads["pad_left"], crop)


def _smooth_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (0, 0), 3)


def _chain_draws(chain: A.Compose, crop: tuple[int, int]) -> list[Window]:
    image, mask = np.zeros((*SHAPE, 3), np.uint8), np.zeros(SHAPE, np.uint8)
    return [_chain_window(chain(image=image, mask=mask)["applied_transforms"], crop) for _ in range(DRAWS)]


def _window_draws(transform: WindowedScaleCrop) -> list[Window]:
    transform.set_random_seed(1)
    return [transform.sample(SHAPE) for _ in range(DRAWS)]


def _ks(a: list[Window], b: list[Window], field: str) -> float:
    return ks_2samp([getattr(w, field) for w in a], [getattr(w, field) for w in b]).pvalue


def test_default_train_draws_the_chains_scales_and_corners():
    chain = _chain_draws(_recorded(default_train(64, hflip=0, color_jitter=0, reference=True)), (64, 64))
    windowed = _window_draws(default_train(64, hflip=0, color_jitter=0))
    for field in ("scale", "top", "left"):
        assert _ks(chain, windowed, field) > 0.01, field
    # both regimes were drawn, and the test can tell a different distribution apart
    assert min(w.top for w in chain) < 0 < max(w.top for w in chain)
    shifted = _window_draws(default_train(64, scale=(0.6, 2.0), hflip=0, color_jitter=0))
    assert _ks(chain, shifted, "scale") < 1e-6 and _ks(chain, shifted, "top") < 0.01


def test_seed_train_draws_the_chains_scales_and_centred_corners():
    chain = _chain_draws(_recorded(seed_train((56, 96), scale=(0.8, 1.3), hflip=0, reference=True)), (56, 96))
    windowed = _window_draws(seed_train((56, 96), scale=(0.8, 1.3), hflip=0))
    assert _ks(chain, windowed, "scale") > 0.01
    for w in chain[:200]:  # the corner is a function of the scale: the same one
        again = sample_window(random.Random(0), SHAPE, (56, 96), (w.scale, w.scale), random_crop=False)
        assert (again.top, again.left, again.scaled) == (w.top, w.left, w.scaled)


@pytest.mark.parametrize("transform", [default_train(64, hflip=0, color_jitter=0, reference=True),
                                       seed_train((56, 96), scale=(0.5, 2.0), hflip=0, reference=True)],
                         ids=["default", "seed"])
def test_same_draw_same_pixels(transform):
    """Replaying the chain's own draws (padded and not, up- and downscaled) gives its very pixels."""
    rng = np.random.default_rng(1)
    image, mask = rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8), rng.integers(0, 21, SHAPE, dtype=np.uint8)
    crop = (64, 64) if "RandomCrop" in str(transform) else (56, 96)
    chain = _recorded(transform)
    for _ in range(300):
        out = chain(image=image, mask=mask)
        window = _chain_window(out["applied_transforms"], crop)
        assert np.array_equal(crop_mask(mask, window), out["mask"])
        assert np.array_equal(crop_image(image, window), out["image"]), window


def test_scale_one_is_exact_including_padding():
    image, mask = _smooth_image(SHAPE), np.random.default_rng(2).integers(0, 21, SHAPE, dtype=np.uint8)
    chain = _recorded(default_train((72, 72), scale=(1.0, 1.0), hflip=0, color_jitter=0, reference=True))
    for _ in range(50):
        out = chain(image=image, mask=mask)
        window = _chain_window(out["applied_transforms"], (72, 72))
        assert window.scale == 1.0 and window.top < 0  # 60 rows padded to 72
        assert np.array_equal(crop_image(image, window), out["image"])
        assert np.array_equal(crop_mask(mask, window), out["mask"])


def test_padding_is_zero_in_the_image_and_ignore_in_the_mask():
    image, mask = np.full((*SHAPE, 3), 200, np.uint8), np.full(SHAPE, 3, np.uint8)
    window = Window(0.5, SHAPE, (30, 40), top=-10, left=-5, size=(64, 64))
    out_image, out_mask = crop_image(image, window), crop_mask(mask, window)
    inside = np.zeros((64, 64), bool)
    inside[10:40, 5:45] = True
    assert (out_mask[inside] == 3).all() and (out_mask[~inside] == IGNORE_INDEX).all()
    assert (out_image[inside] == 200).all() and (out_image[~inside] == 0).all()


def test_image_and_mask_stay_aligned_through_scale_crop_and_flip():
    """Blocks of labels painted in their own colours: after the whole transform (flip included)
    every pixel's colour still names its label, but near a block's edge."""
    colours = np.random.default_rng(3).integers(0, 256, (21, 3)).astype(np.uint8)
    ys, xs = np.mgrid[: SHAPE[0], : SHAPE[1]]
    mask = ((ys // 16) * 5 + xs // 16).astype(np.uint8) % 21
    transform = default_train(64, hflip=1.0, color_jitter=0)
    transform.set_random_seed(4)
    checked = 0
    for _ in range(40):
        out = transform(image=colours[mask], mask=mask)
        label, image = out["mask"], out["image"].astype(int)
        valid = label != IGNORE_INDEX
        # near a block's edge, and at the crop's rim (whose neighbours outside are unseen), the linear
        # image blends two blocks and the nearest-neighbour mask's floor rule sits half a source pixel off
        near = np.ones((7, 7), np.uint8)
        check = valid & (cv2.dilate(label, near) == cv2.erode(label, near))
        check[:3], check[-3:], check[:, :3], check[:, -3:] = False, False, False, False
        assert np.abs(image[check] - colours[label[check]].astype(int)).max() <= 2
        assert (image[~valid] == 0).all()
        checked += int(check.sum())
    assert checked > 40 * 500


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


class _SpyImage(EncodedImage):
    """Records the reduction k of every decode."""

    seen: list[int] = []

    def decode(self, at_least=None):
        image, k = super().decode(at_least)
        _SpyImage.seen.append(k)
        assert image.shape[0] == -(-self.shape[0] // k)  # the decode really is 1/k of the rows
        return image, k


@pytest.mark.parametrize("scale,ks", [((0.2, 0.5), {2, 4}), ((0.55, 2.0), {1})])
def test_jpeg_decodes_at_a_reduced_dct_scale_only_at_half_or_below(scale, ks):
    shape = (375, 500)
    image, mask = _smooth_image(shape, 5), np.zeros(shape, np.uint8)
    encoded = _SpyImage(_jpeg(image), "test.jpg", shape)
    full = np.asarray(Image.open(io.BytesIO(encoded.data)).convert("RGB"))
    transform = default_train(128, scale=scale, hflip=0, color_jitter=0)
    transform.set_random_seed(6)
    _SpyImage.seen = []
    for _ in range(30):
        out = transform.apply_encoded(encoded, mask)
        # the same window from the full decode: close (libjpeg averages where the resize interpolates)
        reference = crop_image(full, out["window"])
        assert np.abs(out["image"].astype(int) - reference).mean() < 3.0
        assert out["image"].shape == (128, 128, 3) and out["mask"].shape == (128, 128)
    assert set(_SpyImage.seen) == ks


def test_a_mask_and_image_of_different_sizes_name_the_sample():
    encoded = EncodedImage(_jpeg(_smooth_image((40, 50))), "shard-0.tar key a (jpg)", (40, 60))
    with pytest.raises(Exception, match="shard-0.tar key a.*differ in size"):
        default_train(32).apply_encoded(encoded, np.zeros((40, 60), np.uint8))


@pytest.mark.parametrize("make", [lambda p: default_train(48, hflip=p, color_jitter=0),
                                  lambda p: seed_train(48, hflip=p)], ids=["default_train", "seed_train"])
def test_flip_is_albumentations_flip_of_the_same_window_at_its_rate(make):
    """hflip=1 gives HorizontalFlip(p=1) of exactly what hflip=0 gives for the same seed (the flip is
    not drawn at 0 or 1); hflip=0.5 flips at its rate (binomial, 4 sigma over 2000 draws)."""
    image, mask = _smooth_image(SHAPE), np.random.default_rng(0).integers(0, 6, SHAPE, dtype=np.uint8)
    never, always = make(0.0), make(1.0)
    never.set_random_seed(5)
    always.set_random_seed(5)
    flip = A.HorizontalFlip(p=1.0)
    for _ in range(20):
        plain, flipped = never(image=image, mask=mask), always(image=image, mask=mask)
        assert flipped["flipped"] and not plain["flipped"] and flipped["window"] == plain["window"]
        expected = flip(image=plain["image"], mask=plain["mask"])
        np.testing.assert_array_equal(flipped["image"], expected["image"])
        np.testing.assert_array_equal(flipped["mask"], expected["mask"])
    half = make(0.5)
    half.set_random_seed(7)
    flips = sum(half(image=image, mask=mask)["flipped"] for _ in range(2000))
    assert abs(flips - 1000) < 4 * (2000 * 0.25) ** 0.5
