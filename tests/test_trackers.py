"""`logger=` choices and the experiment trackers (segframe/engine/trackers/): every logger command composes and the
default is CSV + TensorBoard as before; MLflow (a local SQLite store here; a real tracking server in
test_trackers_server.py) and W&B (offline) receive a tiny shapes run and a resumed process continues the
same tracker runs; a missing extra stops the run before any work, naming the pip line; W&B is offline
unless wandb would find credentials."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers.cli import REPO
from helpers.config import TINY_ON_TINY_SHAPES, compose, tiny

# the default before logger= became a list of choices (conf/logger/default.yaml): the same files in the run dir
DEFAULT = {"csv": {"_target_": "pytorch_lightning.loggers.CSVLogger", "name": "logs", "version": ""},
           "tensorboard": {"_target_": "pytorch_lightning.loggers.TensorBoardLogger", "name": "tb", "version": ""}}


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B as on a machine nobody logged in to: its folders in tmp_path, no key, no netrc entry."""
    import wandb

    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb.teardown()  # wandb keeps its settings (an API key seen in the environment included) per process
    yield
    wandb.teardown()


def _logger_overrides(text: str) -> list[str]:
    """The values of `logger=` overrides in `text` (not Python's `logger=False` or `logger="segframe"`)."""
    return sorted(set(re.findall(r"(?<![\w.])logger=(\[[^\]\s]*\]|[a-z_]+)\b", text)))


def test_every_logger_choice_composes_and_the_default_is_csv_and_tensorboard():
    for choice in ("default", "[csv,tensorboard]"):
        assert OmegaConf.to_container(compose([f"logger={choice}"]).logger) == DEFAULT
    assert OmegaConf.to_container(compose([]).logger) == DEFAULT
    assert OmegaConf.to_container(compose(["logger=none"]).logger) == {}
    assert "logger" not in compose(["logger=[]"])
    nodes = compose(["logger=[csv,tensorboard,mlflow,wandb]", "logger.mlflow.log_checkpoint=true"]).logger
    assert list(nodes) == ["csv", "tensorboard", "mlflow", "wandb"] and nodes.mlflow.log_checkpoint is True
    # every `logger=` a user is shown (README, docs) or a test uses composes
    used = [o for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")] for o in _logger_overrides(p.read_text())]
    used += [o for p in (REPO / "tests").glob("*.py") for o in _logger_overrides(p.read_text())]
    for value in sorted(set(used) | {"csv", "tensorboard", "mlflow", "wandb", "[csv,mlflow]", "[csv,wandb]"}):
        OmegaConf.to_container(compose([f"logger={value}"]), resolve=True)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A local MLflow store, made once: a new SQLite store runs MLflow's schema migrations (seconds)."""
    from mlflow.tracking import MlflowClient

    from segframe.engine.trackers.mlflow_run import local_store_uris

    folder = tmp_path_factory.mktemp("mlflow")
    MlflowClient(local_store_uris(folder)[0]).search_experiments()
    return folder


def test_the_loggers_are_built_from_their_nodes_and_mlflow_follows_its_tracking_uri(tmp_path, monkeypatch, store,
                                                                                 offline_wandb):
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from segframe.engine import trackers
    from segframe.engine.trackers.mlflow_run import local_store_uris

    cfg = compose(["logger=[csv,tensorboard,mlflow,wandb]", f"logger.mlflow.local_store={store}"])
    built = trackers.build(cfg.logger, tmp_path / "run")
    assert [type(b) for b in built] == [CSVLogger, TensorBoardLogger, trackers.MLflowTracker, trackers.WandbTracker]
    assert built[2]._tracking_uri == f"sqlite:///{store / 'mlflow.db'}"
    assert built[2]._artifact_location == (store / "artifacts").as_uri()
    assert built[3].mode == "offline" and built[3]._wandb_init["dir"] == str(tmp_path / "run")
    # unset, the store is outputs/mlflow under the working directory, named absolutely
    assert compose(["logger=mlflow"]).logger.mlflow.local_store == "outputs/mlflow"
    monkeypatch.chdir(tmp_path)
    assert local_store_uris("outputs/mlflow") == (f"sqlite:///{tmp_path / 'outputs/mlflow/mlflow.db'}",
                                                  (tmp_path / "outputs/mlflow/artifacts").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    tracker = trackers.build(compose(["logger=mlflow"]).logger, tmp_path / "run")[0]
    assert tracker._tracking_uri == "http://127.0.0.1:5000" and tracker._artifact_location is None
    assert not (tmp_path / "outputs").exists()  # a tracking server: no local store made
    assert trackers.build(None, tmp_path) == [] and trackers.build(compose(["logger=none"]).logger, tmp_path) == []


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_a_missing_extra_stops_the_run_before_any_work_naming_the_pip_line(extra, tmp_path, monkeypatch):
    from hydra.errors import InstantiationException

    from segframe.core.errors import ConfigError
    from segframe.engine.training import train

    monkeypatch.setitem(sys.modules, extra, None)  # `import mlflow` fails as when the extra is not installed
    cfg = compose(tiny(f"logger=[csv,{extra}]", f"paths.data_dir={tmp_path / 'data'}"))
    with pytest.raises(InstantiationException) as raised:
        train(cfg, tmp_path / "run")
    assert isinstance(raised.value.__cause__, ConfigError)
    assert f'pip install "segframe[{extra}]"' in str(raised.value.__cause__)
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()  # nothing converted or trained


@pytest.mark.slow  # a subprocess (~10 s): the test above checks the same refusal in process
def test_the_command_line_names_the_pip_line_of_a_missing_extra(tmp_path):
    """`python -m segframe.train logger=[csv,mlflow]` where mlflow cannot be imported: one paragraph, exit 1."""
    code = "import sys; sys.modules['mlflow'] = None; from segframe.train import main; main()"
    res = subprocess.run([sys.executable, "-c", code, *tiny("logger=[csv,mlflow]", f"paths.data_dir={tmp_path}"),
                          f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert res.returncode == 1, res.stderr[-3000:]
    assert 'pip install "segframe[mlflow]"' in res.stderr and "Traceback" not in res.stderr
    assert "(while building `logger.mlflow`)" in res.stderr
    assert not (tmp_path / "shapes").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_wandb_is_offline_unless_wandb_would_find_credentials(tmp_path, monkeypatch, offline_wandb):
    from wandb.sdk import wandb_setup

    from segframe.core.errors import ConfigError
    from segframe.engine.trackers.wandb_run import choose_mode

    assert choose_mode("auto") == "offline"
    host = re.sub(r"^https?://", "", wandb_setup.singleton().settings.base_url).split("/")[0]
    (tmp_path / "no-netrc").write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    assert choose_mode("auto") == "online"  # `wandb login` wrote this entry
    (tmp_path / "no-netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert choose_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's own choice wins over auto
    assert choose_mode("auto") == "offline" and choose_mode("online") == "online"

    with pytest.raises(ConfigError, match="logger.wandb.mode=sometimes: expected one of auto, online"):
        choose_mode("sometimes")


def wandb_summary(run_file: Path, key: str) -> float | None:
    """The last value of `key` in the summary records of a W&B run's transaction log (`run-ID.wandb`), which
    holds an offline run: a protobuf SummaryItem is the key (field 1) then its value as JSON (field 16)."""
    data = run_file.read_bytes()
    found = list(re.finditer(rb"\n" + bytes([len(key)]) + re.escape(key.encode()) + rb"\x82\x01(.)", data, re.S))
    if not found:
        return None
    end = found[-1].end()
    return json.loads(data[end:end + found[-1].group(1)[0]])


def test_a_resumed_run_continues_its_mlflow_and_wandb_runs(tiny_shapes, tmp_path, store, one_thread,
                                                           offline_wandb):
    """A run of one epoch, then the same run resumed for a second (`resume=auto`, a finished fit made
    longer), to a local SQLite store and W&B offline: one MLflow run and one W&B run id over both processes;
    the MLflow run has the config, every step's loss, the final metrics and the report; the W&B offline
    run's files hold the final metrics."""
    from mlflow.tracking import MlflowClient

    from segframe.engine.training import train

    run = tmp_path / "run"
    limits = ("trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1")
    base = tiny(f"data.shard_dir={tiny_shapes}", "logger=[csv,mlflow,wandb]", f"logger.mlflow.local_store={store}",
                *limits, base=TINY_ON_TINY_SHAPES)
    train(compose([*base, "trainer.max_epochs=1"]), run)
    first = json.loads((run / "trackers.json").read_text())
    train(compose([*base, "trainer.max_epochs=2", "resume=auto"]), run)
    ids = json.loads((run / "trackers.json").read_text())
    assert ids == first  # the same MLflow run, the same W&B run id

    client = MlflowClient(ids["mlflow"]["tracking_uri"])
    mlflow_run = client.get_run(ids["mlflow"]["run_id"])
    assert mlflow_run.info.status == "FINISHED"
    assert [r.info.run_id for r in client.search_runs([mlflow_run.info.experiment_id])] == [mlflow_run.info.run_id]
    params = mlflow_run.data.params
    assert params["optimizer.lr"] == "0.01" and params["trainer.max_epochs"] == "1"  # params keep their first value
    assert params["model.backbone"] == "resnet18" and params["data.shard_dir"] == str(tiny_shapes)
    steps = [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "train/loss_step")]
    assert sorted(steps) == [0, 1, 2, 3]  # both processes' steps, in one run
    reported = json.loads((run / "metrics.json").read_text())
    assert mlflow_run.data.metrics["final/miou"] == pytest.approx(reported["miou"])
    assert mlflow_run.data.metrics["final/steps"] == 4
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"metrics.json", "per_class.md", "MODEL_CARD.md", "config.yaml"} <= artifacts
    assert not any(a.startswith("checkpoints") for a in artifacts)  # only with logger.mlflow.log_checkpoint=true

    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert [f.name.rsplit("-", 1)[1] for f in folders] == [ids["wandb"]["id"]] * 2  # one per process, one run id
    last = folders[-1]
    assert wandb_summary(last / f"run-{ids['wandb']['id']}.wandb", "final/miou") == pytest.approx(reported["miou"])
    assert json.loads((last / "files" / "metrics.json").read_text())["miou"] == reported["miou"]


def test_an_error_after_the_runs_began_ends_them_as_failed(tmp_path, store, offline_wandb):
    from mlflow.tracking import MlflowClient

    from segframe.engine import trackers

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    loggers = trackers.build(compose(["logger=mlflow", f"logger.mlflow.local_store={store}"]).logger, run_dir)
    trackers.begin(loggers, run_dir, {"optimizer": {"lr": 0.1}})
    with pytest.raises(RuntimeError, match="boom"), trackers.failing(loggers):
        raise RuntimeError("boom")  # e.g. the report failing after training
    assert MlflowClient(loggers[0]._tracking_uri).get_run(loggers[0].run_id).info.status == "FAILED"
