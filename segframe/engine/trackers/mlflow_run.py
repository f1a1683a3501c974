"""`logger=mlflow` (`pip install "segframe[mlflow]"`): the run in an MLflow tracking store.

Where: `MLFLOW_TRACKING_URI` (`logger.mlflow.tracking_uri`) when set (a tracking server, or any store
URI); otherwise a local SQLite store, MLflow 3's default kind of local store (MLflow 3 defaults to
`sqlite:///mlflow.db`; the `./mlruns` file store is the legacy one), in `logger.mlflow.local_store`
(`outputs/mlflow/`: `mlflow.db` and `artifacts/`), shared by every run started from this folder:
`mlflow ui --backend-store-uri sqlite:///outputs/mlflow/mlflow.db`.

What: the resolved config as params (flat dotted keys), the per-step and per-epoch metrics as Lightning
logs them, the final metrics (metrics.json's numbers, `final/...`), the report files as artifacts, and
the best checkpoint with `logger.mlflow.log_checkpoint=true`. A sweep (`-m`) is one experiment, named
after its sweep directory, with one run per job, tagged with the sweep directory and the job's overrides.
A resumed run continues the MLflow run its directory recorded (trackers.json).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from segframe.core.errors import ConfigError
from segframe.engine.trackers.common import (
    IDS,
    Tracker,
    current_job,
    final_metrics,
    params,
    record,
    recorded,
    report_files,
    require,
    shown,
)

log = logging.getLogger("segframe")

DEFAULT_EXPERIMENT = "segframe"


def local_store_uris(folder: str | Path) -> tuple[str, str]:
    """The tracking URI and the artifact location of the local store in `folder`: `mlflow.db` (SQLite) and
    `artifacts/`, absolute (a resumed run may start elsewhere; without an artifact location MLflow would put
    the artifacts of a SQLite store's runs in ./mlruns of the working directory)."""
    folder = Path(folder).expanduser().absolute()
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


class MLflowTracker(Tracker, MLFlowLogger):
    """Lightning's MLFlowLogger (per-step metrics) plus what a segframe run adds: see the module doc."""

    name = "mlflow"

    def __init__(self, save_dir: str, tracking_uri: str | None = None, local_store: str = "outputs/mlflow",
                 experiment_name: str | None = None, run_name: str | None = None,
                 tags: dict[str, Any] | None = None, log_checkpoint: bool = False,
                 synchronous: bool | None = None):
        require("mlflow", "mlflow")
        job = current_job()
        artifact_location = None
        if not tracking_uri:
            tracking_uri, artifact_location = local_store_uris(local_store)
            Path(local_store).expanduser().mkdir(parents=True, exist_ok=True)
        if experiment_name is None:
            experiment_name = shown(job.sweep_dir) if job.sweep_dir else DEFAULT_EXPERIMENT
        self.log_checkpoint = bool(log_checkpoint)
        self.continued = False
        super().__init__(experiment_name=experiment_name, run_name=run_name or shown(save_dir),
                         tracking_uri=tracking_uri, tags={**job.tags(), **(tags or {})},
                         artifact_location=artifact_location, synchronous=synchronous)

    @rank_zero_only
    def continue_run(self, run_dir: Path) -> None:
        from mlflow.exceptions import MlflowException

        ids = recorded(run_dir, self.name)
        if ids is None:
            log.info("logger=mlflow: %s records no MLflow run (it ran without logger=mlflow until now): the rest "
                     "of it goes to a new MLflow run", run_dir)
            return
        try:
            self._mlflow_client.get_run(ids["run_id"])
        except MlflowException as exc:
            raise ConfigError(
                f"resuming {run_dir}: its MLflow run {ids['run_id']} (recorded in {Path(run_dir) / IDS}) is not in "
                f"the tracking store {self._tracking_uri} ({exc.error_code}). It was logged to "
                f"{ids.get('tracking_uri')}: resume with MLFLOW_TRACKING_URI={ids.get('tracking_uri')}, or delete "
                f"{Path(run_dir) / IDS} to log the rest of the run to a new MLflow run") from exc
        self._run_id = ids["run_id"]
        self.continued = True

    @rank_zero_only
    def begin(self, run_dir: Path, config: dict[str, Any]) -> None:
        client = self._mlflow_client
        if self._run_id is None:
            self._experiment_id = self._find_or_create_experiment()
        run_id = self.run_id  # creates the run, or attaches to the continued one
        if self.continued:
            client.update_run(run_id, status="RUNNING")  # a killed process left it RUNNING, a failed one FAILED
        record(run_dir, self.name, run_id=run_id, experiment_id=self.experiment_id, tracking_uri=self._tracking_uri)
        self._log_params(run_id, config)
        log.info("logger=mlflow: %s run %s in experiment %r of %s", "continuing" if self.continued else "logging to",
                 run_id, self._experiment_name, self._tracking_uri)

    def _find_or_create_experiment(self) -> str:
        """The experiment's id; created when missing (the jobs of a parallel sweep may race to create it)."""
        from mlflow.exceptions import MlflowException

        client = self._mlflow_client
        found = client.get_experiment_by_name(self._experiment_name)
        if found is None:
            try:
                return client.create_experiment(self._experiment_name, artifact_location=self._artifact_location)
            except MlflowException:  # created meanwhile by another job (or it exists, deleted)
                found = client.get_experiment_by_name(self._experiment_name)
        if found is None or found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"logger=mlflow: the MLflow experiment {self._experiment_name!r} in {self._tracking_uri} was deleted. "
                f"Restore it (mlflow experiments restore --experiment-id {found.experiment_id if found else '...'}), "
                f"or log to another: logger.mlflow.experiment_name=NAME")
        return found.experiment_id

    def _log_params(self, run_id: str, config: dict[str, Any]) -> None:
        """The config as params. A continued run keeps the values it logged first (MLflow params cannot
        change): the ones this process sets otherwise (`resume`, a raised `trainer.max_epochs`) are named."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        held = self._mlflow_client.get_run(run_id).data.params
        values = {re.sub(r"[^A-Za-z0-9_/. -]+", "_", k): v[:MAX_PARAM_VAL_LENGTH] for k, v in params(config).items()}
        changed = sorted(k for k, v in values.items() if k in held and held[k] != v)
        if changed:
            log.info("logger=mlflow: run %s keeps its params' first values; this process sets otherwise: %s", run_id,
                     ", ".join(f"{k}={values[k]}" for k in changed))
        new = [Param(k, v) for k, v in values.items() if k not in held]
        for i in range(0, len(new), 100):  # MLflow's limit per call
            self._mlflow_client.log_batch(run_id, params=new[i:i + 100], **self._log_batch_kwargs)

    @rank_zero_only
    def finish(self, run_dir: Path, metrics: dict[str, Any], checkpoint: str | None) -> None:
        from mlflow.entities import Metric

        client, run_id = self._mlflow_client, self.run_id
        stamp, step = int(time.time() * 1000), int(metrics.get("steps") or 0)
        values = [Metric(k, v, stamp, step) for k, v in final_metrics(metrics).items()]
        for i in range(0, len(values), 1000):  # MLflow's limit per call
            client.log_batch(run_id, metrics=values[i:i + 1000], **self._log_batch_kwargs)
        for path in report_files(run_dir):
            client.log_artifact(run_id, str(path))
        if self.log_checkpoint and checkpoint:
            client.log_artifact(run_id, checkpoint, "checkpoints")
        client.set_terminated(run_id, "FINISHED")
        where = self._tracking_uri
        browse = f"{where.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}" \
            if where.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {where}"
        log.info("logger=mlflow: run %s finished (%s)", run_id, browse)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Lightning's end of fit and of test: a failure ends the MLflow run as FAILED; after a success
        the evaluation and report still come, and `finish` ends it."""
        if status != "success":
            super().finalize(status)
