"""Shard round trip, sample contract, atomic writes and verify."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from segframe.data.sample import IGNORE_INDEX, RawSample, SampleError, decode_sample, make_key
from segframe.data.shards import ManifestError, iter_shard, read_manifest, verify, write_dataset

from helpers.datasets import encoded, raw_samples, rgb


class ListSource:
    """A source over in-memory samples, like a real converter's listing + loading."""

    def __init__(self, samples: dict[str, list[RawSample]]):
        self.samples = samples

    def splits(self):
        return {split: [(split, i) for i in range(len(items))] for split, items in self.samples.items()}

    def load(self, item):
        split, i = item
        return self.samples[split][i]

    def options(self):
        return {}

    def fingerprint(self):
        return {"n": sum(map(len, self.samples.values()))}


def _jpeg(h: int, w: int, seed: int) -> bytes:
    return encoded(rgb(seed, h, w), "JPEG")


def _mask(h: int, w: int, seed: int, classes: int = 3) -> np.ndarray:
    m = np.random.default_rng(seed).integers(0, classes, (h, w)).astype(np.uint8)
    m[0, :] = IGNORE_INDEX  # void border as in VOC
    return m


CLASSES = ["bg", "a", "b"]
PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]


def _samples(n: int = 5) -> list[RawSample]:
    ids = ["2007_000032", "dir/sub/img.v2.final", "a b+c", "x.y", "plain"]
    out = []
    for i in range(n):
        h, w = 17 + i, 23 + 2 * i
        img = encoded(rgb(i, h, w), "JPEG" if i % 2 == 0 else "PNG")
        out.append(RawSample(id=ids[i % len(ids)] + ("" if i < len(ids) else str(i)), image=img, mask=_mask(h, w, i)))
    return out


def test_round_trip_preserves_bytes_masks_and_ids(tmp_path):
    train = _samples(5)
    out = tmp_path / "ds"
    manifest = write_dataset(ListSource({"train": train, "val": _samples(2)}), out, "toy", CLASSES, PALETTE, shard_size=2)
    assert manifest["splits"]["train"]["num_samples"] == 5
    assert len(manifest["splits"]["train"]["shards"]) == 3  # 2 + 2 + 1
    read = raw_samples(out, "train")
    for raw in train:
        key = make_key(raw.id)
        assert "." not in key and "/" not in key
        sample = read[key]
        ext = "jpg" if raw.image[:2] == b"\xff\xd8" else "png"
        assert sample[ext] == raw.image  # never re-encoded
        image, mask, meta = decode_sample(sample, num_classes=3)
        np.testing.assert_array_equal(mask, raw.mask)  # indices incl. 255 exactly
        assert meta["id"] == raw.id and meta["split"] == "train"
        assert (meta["height"], meta["width"]) == raw.mask.shape == image.shape[:2]
    # per-class pixel counts for class weights
    total = sum(int((r.mask != IGNORE_INDEX).sum()) for r in train)
    assert sum(manifest["splits"]["train"]["class_pixels"]) == total
    assert manifest["splits"]["train"]["ignore_pixels"] == sum(int((r.mask == IGNORE_INDEX).sum()) for r in train)
    assert verify(out) == []


def test_array_images_become_png(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    write_dataset(ListSource({"train": [RawSample("a", arr, np.zeros((9, 11), np.uint8))]}), tmp_path / "d", "t",
                  CLASSES, PALETTE)
    (sample,) = raw_samples(tmp_path / "d", "train").values()
    image, _, _ = decode_sample(sample)
    np.testing.assert_array_equal(image, arr)  # lossless


@pytest.mark.parametrize(
    "bad, message",
    [
        (RawSample("sz", _jpeg(10, 12, 0), np.zeros((10, 13), np.uint8)), "12x10"),
        (RawSample("lbl", _jpeg(10, 12, 0), np.full((10, 12), 7, np.uint8)), "[7]"),
        (RawSample("cor", b"\xff\xd8\xff\xe0garbage", np.zeros((10, 12), np.uint8)), "cannot decode image"),
        # a JPEG cut short: its header (and size) read fine, the entropy-coded data does not
        (RawSample("cut", _jpeg(64, 64, 0)[:600], np.zeros((64, 64), np.uint8)), "cannot decode image"),
    ],
)
def test_bad_samples_stop_conversion_and_leave_nothing(tmp_path, bad, message):
    out = tmp_path / "ds"
    with pytest.raises(SampleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        write_dataset(ListSource({"train": _samples(3) + [bad]}), out, "toy", CLASSES, PALETTE)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [".ds.lock"]  # no partial directory survives


def test_on_bad_skip_lists_skipped(tmp_path):
    bad = RawSample("lbl", _jpeg(10, 12, 0), np.full((10, 12), 9, np.uint8), source="/raw/lbl.png")
    manifest = write_dataset(ListSource({"train": _samples(3) + [bad]}), tmp_path / "d", "t", CLASSES, PALETTE,
                             on_bad="skip")
    assert manifest["splits"]["train"]["num_samples"] == 3
    assert len(manifest["skipped"]) == 1 and "/raw/lbl.png" in manifest["skipped"][0]["problem"]


def test_duplicate_keys_are_refused(tmp_path):
    a, b = _samples(2)
    a.id, b.id = "x.y", "x_y"
    with pytest.raises(SampleError, match="both map to shard key"):
        write_dataset(ListSource({"train": [a, b]}), tmp_path / "d", "t", CLASSES, PALETTE)


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(SampleError, match="no samples"):
        write_dataset(ListSource({"train": _samples(2), "val": []}), tmp_path / "d", "t", CLASSES, PALETTE)


def test_interrupted_conversion_leaves_previous_dataset_intact(tmp_path):
    out = tmp_path / "ds"
    write_dataset(ListSource({"train": _samples(3)}), out, "toy", CLASSES, PALETTE)
    before = (out / "manifest.json").read_text()

    class Crash(ListSource):
        def load(self, item):
            if item[1] == 2:
                raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a split
            return super().load(item)

    with pytest.raises(KeyboardInterrupt):
        write_dataset(Crash({"train": _samples(4)}), out, "toy", CLASSES, PALETTE)
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", "ds"]
    # a stale partial directory from a killed process is removed by the next run
    stale = tmp_path / ".ds.partial-999999999"
    stale.mkdir()
    (stale / "train-000000.tar").write_bytes(b"half")
    write_dataset(ListSource({"train": _samples(4)}), out, "toy", CLASSES, PALETTE)
    assert not stale.exists() and read_manifest(out)["splits"]["train"]["num_samples"] == 4


def test_parallel_conversion_equals_serial(tmp_path):
    src = ListSource({"train": _samples(5), "val": _samples(2)})
    m0 = write_dataset(src, tmp_path / "a", "toy", CLASSES, PALETTE, shard_size=2, num_workers=0)
    m2 = write_dataset(src, tmp_path / "b", "toy", CLASSES, PALETTE, shard_size=2, num_workers=2)
    assert [s["sha256"] for s in m0["splits"]["train"]["shards"]] == [s["sha256"] for s in m2["splits"]["train"]["shards"]]


def _dataset(tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    write_dataset(ListSource({"train": _samples(5)}), out, "toy", CLASSES, PALETTE, shard_size=3)
    return out


def test_verify_catches_flipped_byte(tmp_path):
    out = _dataset(tmp_path)
    shard = out / "train-000000.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF  # inside the first member's payload
    shard.write_bytes(bytes(data))
    problems = verify(out)
    assert any("train-000000.tar" in p and "sha256" in p for p in problems)


def test_verify_catches_corrupt_mask_by_key(tmp_path):
    out = _dataset(tmp_path)
    shard = out / "train-000001.tar"
    members = []
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            members.append((m, tar.extractfile(m).read()))
    with tarfile.open(shard, "w") as tar:
        for m, payload in members:
            if m.name.endswith(".seg.png"):
                payload = payload[:20]
                m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    problems = verify(out)
    assert any("train-000001.tar key" in p and "cannot decode mask" in p for p in problems)


def test_verify_and_reader_catch_truncated_shard(tmp_path):
    out = _dataset(tmp_path)
    shard = out / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    problems = verify(out)
    assert any("train-000000.tar" in p and "bytes" in p for p in problems)
    assert any("train-000000.tar" in p and "samples, manifest says 3" in p for p in problems)
    with pytest.raises(SampleError, match="train-000000.tar"):
        list(iter_shard(str(shard), 3))


def test_shard_with_appended_members_is_modified_and_the_advice_names_the_dataset(tmp_path):
    out = _dataset(tmp_path)  # dataset "toy" in <tmp>/ds
    shard = out / "train-000000.tar"
    with tarfile.open(shard) as tar:
        first = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.name.startswith(tar.getnames()[0].split(".")[0])]
    with tarfile.open(shard, "a") as tar:  # one more sample, as appending members to the tar gives
        for m, payload in first:
            m.name = "zz_appended." + m.name.split(".", 1)[1]
            tar.addfile(m, io.BytesIO(payload))
    with pytest.raises(SampleError, match=r"holds 4 samples but the manifest says 3 \(modified since conversion\)"):
        list(iter_shard(str(shard), 3))
    with pytest.raises(SampleError, match=r"python -m segframe\.convert data=ds verify=true"):
        list(iter_shard(str(shard), 3))  # no config at hand: the dataset folder's name
    with pytest.raises(SampleError, match=r"`python -m segframe\.convert data=folder data\.name=toy overwrite=true`"):
        list(iter_shard(str(shard), 3, convert_hint="python -m segframe.convert data=folder data.name=toy"))
    assert any("train-000000.tar: 4 samples, manifest says 3 (modified since conversion)" in p for p in verify(out))


def test_reader_refuses_unknown_manifest(tmp_path):
    out = _dataset(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    m["format_version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="version 99"):
        read_manifest(out)
    with pytest.raises(ManifestError, match="python -m segframe.convert data=voc"):
        read_manifest(tmp_path / "missing", "python -m segframe.convert data=voc")


def test_decoding_never_unpickles(tmp_path):
    """A shard entry with a pickle extension is ignored, never loaded."""
    import pickle

    out = _dataset(tmp_path)
    shard = out / "train-000000.tar"
    with tarfile.open(shard, "a") as tar:
        payload = pickle.dumps({"evil": True})
        info = tarfile.TarInfo("2007_000032.pyd")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    for sample in iter_shard(str(shard)):
        decoded = decode_sample(sample) if "seg.png" in sample else None
        assert decoded is None or all(not isinstance(v, dict) or "evil" not in v for v in decoded)


def test_shapes_generator_is_deterministic_and_colour_independent():
    from segframe.data.sources.shapes import CLASSES, ShapesSource

    src = ShapesSource(num_train=4, num_val=2, size=64, seed=3)
    a, b = src.generate("train", 1), src.generate("train", 1)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(src.generate("train", 1)[0], src.generate("val", 1)[0])
    # over many images every class appears, each in many different colours
    colours: dict[int, set] = {c: set() for c in range(1, len(CLASSES))}
    for i in range(40):
        img, mask = src.generate("train", i)
        for c in np.unique(mask):
            if c:
                colours[int(c)].add(tuple(np.median(img[mask == c], axis=0).astype(int) // 32))
    assert all(len(v) >= 5 for v in colours.values()), {k: len(v) for k, v in colours.items()}


def test_a_second_conversion_into_the_same_directory_is_refused_while_the_first_runs(tmp_path):
    import subprocess
    import sys
    import time

    from segframe.data.shard_writer import _ConversionLock
    from segframe.core.errors import ConversionInProgress

    out = tmp_path / "ds"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from segframe.data.shard_writer import _ConversionLock\n"
        "with _ConversionLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(30)"), str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        partial = tmp_path / f".ds.partial-{holder.pid}"
        partial.mkdir()  # the live conversion's work in progress
        with pytest.raises(ConversionInProgress, match="another process is converting into"):
            write_dataset(ListSource({"train": _samples(2)}), out, "toy", CLASSES, PALETTE)
        assert partial.is_dir()  # left alone while its writer lives
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    write_dataset(ListSource({"train": _samples(2)}), out, "toy", CLASSES, PALETTE)  # the OS released the lock
    assert not partial.exists() and read_manifest(out)["splits"]["train"]["num_samples"] == 2
    with _ConversionLock(out):  # and this process can take it again after a conversion
        pass


def test_sixteen_bit_images_are_refused_not_clipped(tmp_path):
    sixteen_bit = encoded(np.full((6, 8), 40000, np.uint16), "PNG")
    bad = RawSample("deep", sixteen_bit, np.zeros((6, 8), np.uint8), source="/raw/deep.png")
    with pytest.raises(SampleError, match=r"/raw/deep\.png: image mode 'I;16' .* rescale it to 8 bits"):
        write_dataset(ListSource({"train": [bad]}), tmp_path / "d", "t", CLASSES, PALETTE)
