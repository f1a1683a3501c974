"""Remote shards: data.shard_dir as an http(s):// URL or a pipe: command, served by a local
HTTP server on 127.0.0.1 (nothing leaves the machine)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from helpers.cli import run_cli
from helpers.config import TINY_ON_TINY_SHAPES, compose
from segframe.data import remote
from segframe.data.augment import identity
from segframe.data.datamodule import SegDataModule
from segframe.data.remote import LocationError
from segframe.data.sample import SampleError
from segframe.data.shards import ManifestError, iter_shard, read_manifest, verify


class _Handler(SimpleHTTPRequestHandler):
    """Static files, plus two kinds of broken download: under /cut/ every response stops halfway
    (no Range support); under /flaky/ the first response for a file stops halfway and Range
    requests are honoured; under /stall/ the headers come and then nothing."""

    seen: set[str] = set()

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:
        kind = self.path.split("/")[1]
        if kind not in ("cut", "flaky", "stall") or self.path.endswith("/manifest.json"):
            return super().do_GET()
        data = Path(self.translate_path(self.path)).read_bytes()
        start = int(re.match(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers["Range"] else 0
        if start and kind == "flaky":
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
            start = 0
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if kind == "stall":
            time.sleep(3)
            return
        first = self.path not in _Handler.seen
        _Handler.seen.add(self.path)
        cut = kind == "cut" or (kind == "flaky" and first)
        self.wfile.write(data[start:len(data) // 2] if cut else data[start:])


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_shapes):
    """(root dir served over HTTP, base URL); the tiny dataset is at <root>/shapes."""
    root = tmp_path_factory.mktemp("www")
    shutil.copytree(tiny_shapes, root / "shapes")
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _copy(served, name: str, under: str = "") -> tuple[Path, str]:
    """A fresh copy of the dataset at <root>/<under>/<name>: (its dir, its URL)."""
    root, base = served
    folder = root / under / name if under else root / name
    shutil.copytree(root / "shapes", folder)
    return folder, f"{base}/{under}/{name}" if under else f"{base}/{name}"


def _batches(shard_dir: str, split: str, workers: int = 0, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm = SegDataModule(shard_dir, identity(), identity(), batch_size=4, eval_batch_size=3, num_workers=workers,
                       shuffle_buffer=8, seed=0, pin_memory=False, **kw)
    return list(dm.train_dataloader() if split == "train" else dm.eval_dataloader(split))


def _same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_http_datamodule_yields_the_local_samples(served, tiny_shapes):
    _, base = served
    url = f"{base}/shapes"
    assert read_manifest(url) == read_manifest(tiny_shapes)
    for split, workers in (("train", 2), ("val", 0)):
        local = _batches(str(tiny_shapes), split, workers)
        assert sum(len(b[0]) for b in local) == (24 if split == "train" else 10)
        assert _same(_batches(url, split, workers), local), split
        assert _same(_batches(url + "/", split, workers, verify_checksums=True), local), split
    keys = [s["__key__"] for s in iter_shard(f"{url}/val-000000.tar", 6)]
    assert keys == [s["__key__"] for s in iter_shard(str(tiny_shapes / "val-000000.tar"), 6)] and len(keys) == 6
    assert verify(url) == []


def test_pipe_location_with_a_name_placeholder(served, tiny_shapes):
    root, _ = served
    pipe = f"pipe:cat {root / 'shapes'}/{{name}}"
    assert _same(_batches(pipe, "val", verify_checksums=True), _batches(str(tiny_shapes), "val"))
    assert _same(_batches(pipe, "train", workers=2), _batches(str(tiny_shapes), "train", workers=2))
    with pytest.raises(LocationError, match=re.escape("needs the placeholder {name}")):
        read_manifest(f"pipe:cat {root / 'shapes'}/manifest.json")
    with pytest.raises(LocationError, match="s3:// locations are not read directly.*pipe:aws s3 cp"):
        read_manifest("s3://bucket/voc")


def test_missing_shard_names_the_shard_and_url(served):
    folder, url = _copy(served, "missing")
    (folder / "val-000001.tar").unlink()
    with pytest.raises(SampleError) as err:
        _batches(url, "val")
    message = str(err.value)
    assert f"{url}/val-000001.tar" in message and "HTTP 404" in message and "uploaded" in message
    with pytest.raises(SampleError, match=re.escape(f"{url}/val-000001.tar")):
        _batches(url, "val", workers=2)  # raised in a DataLoader worker, still naming the shard
    problems = verify(url)
    assert any(p.startswith("val-000001.tar: cannot read") and "HTTP 404" in p for p in problems), problems


def test_failing_pipe_command_names_the_shard_and_shows_its_stderr(served):
    folder, _ = _copy(served, "pipe-missing")
    (folder / "train-000002.tar").unlink()
    pipe = f"pipe:cat {folder}/{{name}}"
    with pytest.raises(SampleError) as err:
        _batches(pipe, "train")
    message = str(err.value)
    assert f"pipe:cat {folder}/train-000002.tar" in message and "exited with status 1" in message
    assert "No such file" in message  # cat's stderr
    with pytest.raises(ManifestError, match="exited with status 1"):
        read_manifest(f"pipe:cat {folder}/nowhere/{{name}}")


def test_truncated_shard_names_the_shard(served):
    folder, url = _copy(served, "truncated")
    shard = folder / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(SampleError, match=re.escape(f"shard {url}/train-000001.tar")):
        _batches(url, "train")
    problems = verify(url)
    assert any(p.startswith("train-000001.tar:") and "bytes, manifest says" in p for p in problems), problems


def test_a_download_that_breaks_is_resumed_or_named(served, tiny_shapes, monkeypatch):
    monkeypatch.setattr(remote, "_sleep", lambda s: None)
    _, url = _copy(served, "shapes", under="flaky")  # first response of each file stops halfway; Range works
    assert _same(_batches(url, "val", verify_checksums=True), _batches(str(tiny_shapes), "val"))
    _, url = _copy(served, "shapes", under="cut")  # every response stops halfway, no Range support
    with pytest.raises(SampleError) as err:
        _batches(url, "val")
    message = str(err.value)
    assert f"{url}/val-000000.tar" in message and "download broke after" in message, message


def test_a_stalled_download_times_out(served, monkeypatch):
    monkeypatch.setattr(remote, "TIMEOUT", 0.5)
    monkeypatch.setattr(remote, "RETRIES", 0)
    _, url = _copy(served, "shapes", under="stall")
    start = time.time()
    with pytest.raises(SampleError, match=re.escape(f"{url}/val-000000.tar") + ".*no data for 0.5 s"):
        _batches(url, "val")
    with pytest.raises(SampleError, match="wrote nothing for 0.5 s"):
        list(iter_shard(f"pipe:sleep 5; cat {served[0] / 'shapes'}/val-000000.tar"))
    assert time.time() - start < 5


def test_wrong_checksum_is_an_error_only_when_verifying(served):
    folder, url = _copy(served, "badsum")
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = manifest["splits"]["val"]["shards"][1]
    good, shard["sha256"] = shard["sha256"], "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert len(_batches(url, "val")) == 4  # not asked to verify: read as it is
    with pytest.raises(SampleError) as err:
        _batches(url, "val", verify_checksums=True)
    message = str(err.value)
    assert f"{url}/val-000001.tar" in message and f"sha256 {good}" in message and "0" * 64 in message
    assert "upload the shard again" in message
    assert verify(url) == ["val-000001.tar: sha256 differs from the manifest (file changed or corrupt)"]


def test_unreachable_server_or_missing_manifest_fails_fast_with_the_url(served):
    url = f"http://127.0.0.1:{_closed_port()}/shapes"
    start = time.time()
    with pytest.raises(ManifestError, match=re.escape(f"{url}/manifest.json") + ".*cannot connect"):
        read_manifest(url)
    assert time.time() - start < 5
    with pytest.raises(ManifestError, match=re.escape(f"{served[1]}/nothing/manifest.json") + ".*HTTP 404"):
        read_manifest(f"{served[1]}/nothing", "python -m segframe.convert data=voc")


def test_manifest_with_an_unsafe_shard_name_is_refused(served):
    folder, url = _copy(served, "unsafe")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["val"]["shards"][0]["name"] = "x.tar; rm -rf ~"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="not a plain file name"):
        read_manifest(url)


def test_train_cli_and_eval_read_http_shards(served, tmp_path):
    from segframe.engine.evaluating import evaluate

    _, base = served
    url = f"{base}/shapes"
    run = tmp_path / "run"
    res = run_cli("train", *TINY_ON_TINY_SHAPES, f"data.shard_dir={url}", f"paths.data_dir={tmp_path / 'data'}",
                  "trainer.max_epochs=1", "trainer.limit_train_batches=2", "datamodule.verify_checksums=true",
                  f"hydra.run.dir={run}")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == 10 and sum(map(sum, metrics["confusion_matrix"])) == 10 * 48 * 48
    assert not (tmp_path / "data").exists()  # nothing converted locally
    # `python -m segframe.eval ckpt=... data=shapes data.shard_dir=URL`, in this process (a CLI start is slow)
    cfg = compose([f"ckpt={run / 'checkpoints' / 'last.ckpt'}", "data=shapes", f"data.shard_dir={url}",
                   "datamodule.num_workers=0", "report.num_images=0", "trainer.enable_progress_bar=false"], "eval")
    (tmp_path / "eval").mkdir()
    assert evaluate(cfg, tmp_path / "eval")["confusion_matrix"] == metrics["confusion_matrix"]


def test_cli_error_for_an_unreachable_location(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/shapes"
    res = run_cli("train", *TINY_ON_TINY_SHAPES, f"data.shard_dir={url}", f"paths.data_dir={tmp_path / 'data'}",
                  f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 1 and f"{url}/manifest.json" in res.stderr and "cannot connect" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "data").exists()  # shapes converts itself on first use, but only into a local dir


def test_convert_refuses_a_remote_location_and_verifies_one(served, tmp_path, capsys):
    from segframe.data.conversion import convert

    root, base = served
    for location in (f"{base}/new", f"'pipe:cat {root}/new/{{name}}'"):  # Hydra needs quotes around '{'
        with pytest.raises(LocationError, match="cannot convert into data.shard_dir=.*Convert into a local directory"):
            convert(compose([f"data.shard_dir={location}", "num_workers=0"], "convert"), tmp_path)
    assert not (root / "new").exists()
    assert convert(compose([f"data.shard_dir={base}/shapes", "verify=true"], "convert"), tmp_path) == 0
    assert f"verify {base}/shapes: OK" in capsys.readouterr().out
