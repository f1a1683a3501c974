"""`logger=mlflow` against a real MLflow tracking server, the way a lab runs one: `mlflow server` on
127.0.0.1 at a free port, with its SQLite backend store and an artifacts destination (the server
proxies artifact uploads), started and stopped here. A two-job sweep of short shapes runs
(`python -m segframe.train -m ...`, MLFLOW_TRACKING_URI set) is read back with the MLflow client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.cli import ok, run_cli
from helpers.config import TINY_ON_TINY_SHAPES, tiny


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The URL of an `mlflow server` of this module's own; stopped (its process group) at the end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240  # a new store runs its schema migrations first
        while True:
            assert proc.poll() is None, f"mlflow server exited:\n{(root / 'server.log').read_text()[-3000:]}"
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert time.time() < deadline, "mlflow server did not answer /health in time"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started: the server and its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow  # a tracking server and a two-job CLI sweep (~1 min)
def test_a_sweep_is_one_mlflow_experiment_with_one_run_per_job_on_a_tracking_server(server, tiny_shapes, tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    args = tiny(f"data.shard_dir={tiny_shapes}", "logger=[csv,mlflow]", "logger.mlflow.log_checkpoint=true",
                "trainer.max_epochs=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                "trainer.log_every_n_steps=1", "report.num_images=2", base=TINY_ON_TINY_SHAPES)
    res = run_cli("train", "-m", *args, "optimizer.lr=0.01,0.001", f"hydra.sweep.dir={sweep}",
                  env={"MLFLOW_TRACKING_URI": server})
    ok(res)

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(str(sweep))  # one experiment, named after the sweep directory
    runs = client.search_runs([experiment.experiment_id], order_by=["params.`optimizer.lr` DESC"])
    assert [r.data.params["optimizer.lr"] for r in runs] == ["0.01", "0.001"]  # one run per job
    for job, run in enumerate(runs):
        run_dir = sweep / str(job)
        assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == run.info.run_id
        tags, params = run.data.tags, run.data.params
        assert tags["segframe.sweep_dir"] == str(sweep) and tags["segframe.sweep_job"] == str(job)
        assert f"optimizer.lr={params['optimizer.lr']}" in tags["segframe.overrides"].split()
        assert tags["mlflow.runName"] == str(run_dir) and run.info.status == "FINISHED"
        assert params["logger.mlflow.tracking_uri"] == server and params["trainer.max_epochs"] == "2"
        # per step and per epoch, as Lightning logged them; the final numbers of metrics.json
        history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
                   for k in ("train/loss_step", "val/miou")}
        assert [s for s, _ in history["train/loss_step"]] == [0, 1, 2, 3]
        assert [s for s, _ in history["val/miou"]] == [1, 3]  # after each epoch's 2 steps
        reported = json.loads((run_dir / "metrics.json").read_text())
        assert run.data.metrics["final/miou"] == pytest.approx(reported["miou"])
        assert run.data.metrics["final/steps"] == 4
        # the report files and (log_checkpoint=true) the best checkpoint, uploaded through the server
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.json", "per_class.md", "predictions.png", "MODEL_CARD.md", "curves.png"} <= files
        best = Path(reported["checkpoint"]).name
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [f"checkpoints/{best}"]
        fetched = Path(client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path / f"dl{job}")))
        assert json.loads(fetched.read_text()) == reported
