"""Datamodule: exactly-once validation, seeded per-epoch shuffles, worker/rank splitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segframe.data.augment import default_train, identity
from segframe.data.batch import pad_collate
from segframe.data.datamodule import SegDataModule, ShardStream, TrainStream
from segframe.data.sample import IGNORE_INDEX
from segframe.data.shards import read_manifest, shard_urls


def _fingerprints(loader) -> list[bytes]:
    out = []
    for images, _ in loader:
        for img in images:
            out.append(img.numpy().tobytes())
    return out


@pytest.mark.parametrize("workers, world", [(0, 1), (1, 1), (2, 1), (3, 1), (5, 2), (2, 3)])
def test_validation_sees_every_sample_exactly_once(tiny_shapes, workers, world):
    """10 val samples in 2 shards: more consumers than shards must neither crash nor duplicate."""
    manifest = read_manifest(tiny_shapes)
    shards = shard_urls(manifest, "val", tiny_shapes)
    seen = []
    for rank in range(world):
        stream = ShardStream(shards, identity(), 6, rank=rank, world_size=world)
        loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=workers,
                                             collate_fn=pad_collate)
        seen += _fingerprints(loader)
    assert len(seen) == 10 and len(set(seen)) == 10


def _train_epoch(tiny_shapes, epoch: int, workers: int = 2, seed: int = 0) -> list[bytes]:
    dm = SegDataModule(str(tiny_shapes), identity(), identity(), batch_size=4, num_workers=workers,
                       shuffle_buffer=8, seed=seed)
    loader = dm.train_dataloader()
    dm.set_epoch(epoch)
    batches = list(loader)
    assert len(batches) == len(loader) == 24 // 4  # one pass, whole batches
    assert all(b[0].shape[0] == 4 for b in batches)
    return _fingerprints(batches)


def test_train_shuffle_is_seeded_and_changes_every_epoch(tiny_shapes):
    e0, e0_again, e1 = _train_epoch(tiny_shapes, 0), _train_epoch(tiny_shapes, 0), _train_epoch(tiny_shapes, 1)
    assert e0 == e0_again  # reproducible
    assert e0 != e1  # reshuffled per epoch
    assert _train_epoch(tiny_shapes, 0, seed=1) != e0
    # one epoch covers the training set (identity transform, one pass over 4 shards by 2 workers)
    assert len(set(e0)) == 24


def test_train_epoch_length_is_equal_on_every_rank(tiny_shapes):
    manifest = read_manifest(tiny_shapes)
    shards = shard_urls(manifest, "train", tiny_shapes)
    counts = []
    for rank in range(3):  # 4 shards over 3 ranks x 2 workers: uneven shard counts
        stream = TrainStream(shards, identity(), 6, batches_per_epoch=2, batch_size=4, rank=rank, world_size=3)
        loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2)
        counts.append(sum(1 for _ in loader))
    assert counts == [2, 2, 2]


def test_batches_are_uint8_images_and_uint8_masks_widened_on_the_device(tiny_shapes):
    dm = SegDataModule(str(tiny_shapes), default_train(crop_size=40), identity(), batch_size=4, num_workers=0)
    images, masks = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 40, 40)
    assert images.is_contiguous(memory_format=torch.channels_last)  # as the samples: no transpose while batching
    assert masks.dtype == torch.uint8 and masks.shape == (4, 40, 40)
    values = set(masks.unique().tolist())
    assert values <= set(range(6)) | {IGNORE_INDEX}
    # what Lightning calls after moving a batch to the device: the int64 targets losses index with
    wide_images, wide = dm.on_after_batch_transfer((images, masks), 0)
    assert wide_images is images and wide.dtype == torch.int64 and torch.equal(wide, masks.long())


def test_stream_samples_share_the_augmented_arrays_memory():
    """as_tensors copies only what torch cannot share: a flipped view (negative strides), read-only memory."""
    from segframe.data.batch import as_tensors

    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    mask = np.arange(6, dtype=np.uint8).reshape(2, 3)
    t_image, t_mask = as_tensors(image, mask)
    assert t_image.shape == (3, 2, 3) and np.shares_memory(t_image.numpy(), image)
    assert torch.equal(t_image, torch.from_numpy(image.transpose(2, 0, 1).copy()))
    flipped, readonly = mask[:, ::-1], mask.copy()
    readonly.flags.writeable = False
    assert torch.equal(as_tensors(image[:, ::-1], flipped)[1], torch.from_numpy(flipped.copy()))
    assert not np.shares_memory(as_tensors(image, readonly)[1].numpy(), readonly)


def test_missing_shards_name_the_convert_command(tmp_path):
    from segframe.data.shards import ManifestError

    with pytest.raises(ManifestError, match="python -m segframe.convert data=voc"):
        SegDataModule(str(tmp_path / "voc"), convert_hint="python -m segframe.convert data=voc")


def test_augmentation_masks_stay_integral_and_aligned():
    """Encode the class in the image (pixel value = 40*class) and check every transform keeps
    image and mask aligned: padded pixels are image 0 / mask 255, everything else matches."""
    from segframe.data.augment import seed_train

    rng = np.random.default_rng(0)
    mask = rng.integers(0, 6, (8, 10)).repeat(12, 0).repeat(12, 1).astype(np.uint8)  # 96x120, 12-px blocks
    image = np.repeat((40 * mask + 20)[..., None], 3, axis=2).astype(np.uint8)
    for transform in (default_train(crop_size=56, color_jitter=0.0), seed_train(crop_size=(56, 64)), identity()):
        transform.set_random_seed(1)
        for _ in range(20):
            out = transform(image=image, mask=mask)
            img, m = out["image"], out["mask"]
            assert m.dtype == np.uint8 and img.shape[:2] == m.shape
            assert set(np.unique(m).tolist()) <= set(range(6)) | {IGNORE_INDEX}
            valid = m != IGNORE_INDEX
            # interior pixels (away from block edges where bilinear resize blends) agree
            expected = 40 * m.astype(int) + 20
            agree = np.abs(img[..., 0].astype(int) - expected) <= 20
            assert agree[valid].mean() > 0.85
            assert (img[~valid] == 0).all()  # padding: black image, ignore mask


def test_lightning_fit_reshuffles_every_epoch(tiny_shapes, monkeypatch):
    """The epoch reaches the train stream before each epoch's iterator starts under pl.Trainer."""
    import functools
    import logging

    import pytorch_lightning as pl

    from segframe.models.fcn import FCN
    from segframe.engine.module import SegModule

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    seen: list[int] = []
    original = TrainStream.__iter__

    def spy(self):
        seen.append(self.epoch)
        return original(self)

    monkeypatch.setattr(TrainStream, "__iter__", spy)
    dm = SegDataModule(str(tiny_shapes), identity(), identity(), batch_size=12, num_workers=0)
    module = SegModule(FCN(6, 32, "resnet18"), functools.partial(torch.optim.SGD, lr=0.01), None, dm.classes,
                       dm.palette)
    pl.Trainer(max_epochs=3, limit_val_batches=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0).fit(module, datamodule=dm)
    assert seen == [0, 1, 2]


def test_pad_collate_keeps_each_layout_and_pads_both():
    """Channels-last samples (ShardStream) batch channels-last, contiguous CHW samples (a per-file
    Dataset) batch contiguous; the values are the same either way, padding 0 / IGNORE_INDEX."""
    rng = np.random.default_rng(0)
    hwc = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((5, 7), (6, 4))]
    masks = [rng.integers(0, 6, a.shape[:2], dtype=np.uint8) for a in hwc]
    views = pad_collate([(torch.from_numpy(a).permute(2, 0, 1), torch.from_numpy(m)) for a, m in zip(hwc, masks)])
    planar = pad_collate([(torch.from_numpy(a.transpose(2, 0, 1).copy()), torch.from_numpy(m))
                          for a, m in zip(hwc, masks)])
    assert views[0].is_contiguous(memory_format=torch.channels_last) and planar[0].is_contiguous()
    assert views[0].shape == planar[0].shape == (2, 3, 6, 7)
    assert torch.equal(views[0], planar[0]) and torch.equal(views[1], planar[1])
    assert views[0][1, :, :, 4:].eq(0).all() and views[1][0, 5:].eq(IGNORE_INDEX).all()


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_model_input_has_the_asked_layout_whatever_the_batch_has(channels_last):
    from segframe.models.base import to_input

    batch = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8).permute(0, 3, 1, 2)  # as pad_collate's
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = to_input(batch, fmt)
    assert x.dtype == torch.float32 and x.is_contiguous(memory_format=fmt)
    assert torch.equal(x, batch.float() / 255.0)
    assert to_input(x, torch.contiguous_format).is_contiguous()
