"""`logger=wandb` (`pip install "segframe[wandb]"`): the run in Weights & Biases, offline unless the
user is logged in, so that training never needs the network.

`logger.wandb.mode=auto` (the default) is `online` when wandb would find credentials without asking
(`WANDB_API_KEY` or `WANDB_IDENTITY_TOKEN_FILE`, the `.netrc` entry `wandb login` writes for the W&B
host, an API key in wandb's settings: the sources `wandb.login()` reads, found with wandb's own
functions, nothing sent), else `offline`; a `WANDB_MODE` the user set wins over auto. An offline run
lives in `<run>/wandb/offline-run-*-ID/`: `wandb sync <run>/wandb/offline-run-*` uploads it (the folders
of a resumed run share one run id and are synced in order, into that one run).

What: the resolved config as the run's config, the per-step and per-epoch metrics as Lightning logs them
(against `trainer/global_step`), the final metrics (metrics.json's numbers, `final/...`) in the run
summary, the report files in the run's files, and the best checkpoint as a `model` artifact with
`logger.wandb.log_checkpoint=true`. A sweep's runs are one group, named after the sweep directory, each
tagged with its overrides. A resumed run continues the W&B run id its directory recorded (trackers.json).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from segframe.core.errors import ConfigError
from segframe.engine.trackers.common import (
    Tracker,
    current_job,
    final_metrics,
    record,
    recorded,
    report_files,
    require,
    shown,
)

log = logging.getLogger("segframe")

MODES = ("auto", "online", "offline", "disabled")
MAX_TAG = 64  # W&B's limit on a tag's length


def credentials() -> str | None:
    """Where wandb would find this user's credentials, without prompting or the network (None: nowhere):
    what wandb.login() reads, in its order, through wandb's own functions."""
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    for variable in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE"):
        if os.environ.get(variable):
            return variable
    settings = wandb_setup.singleton().settings  # reads WANDB_* and wandb's settings files; starts nothing
    if wbauth.read_netrc_auth(host=settings.base_url):
        return f"the .netrc entry for {settings.base_url}"
    return "wandb's settings (api_key)" if settings.api_key else None


def choose_mode(mode: str) -> str:
    """`logger.wandb.mode` as wandb.init takes it: `auto` becomes online or offline (see the module doc)."""
    if mode not in MODES:
        raise ConfigError(f"logger.wandb.mode={mode}: expected one of {', '.join(MODES)} (auto: online when you are "
                          f"logged in to W&B, offline otherwise)")
    if mode != "auto":
        return mode
    given = os.environ.get("WANDB_MODE")
    if given:
        return {"dryrun": "offline", "run": "online"}.get(given, given)
    found = credentials()
    log.info("logger=wandb: %s", f"online (credentials: {found})" if found else
             "offline (not logged in: no WANDB_API_KEY, no `wandb login`); upload later with wandb sync")
    return "online" if found else "offline"


class WandbTracker(Tracker, WandbLogger):
    """Lightning's WandbLogger (per-step metrics) plus what a segframe run adds: see the module doc."""

    name = "wandb"

    def __init__(self, save_dir: str, project: str = "segframe", entity: str | None = None, name: str | None = None,
                 group: str | None = None, tags: list[str] | None = None, mode: str = "auto",
                 log_checkpoint: bool = False):
        require("wandb", "wandb")
        job = current_job()
        self.mode = choose_mode(str(mode))
        self.log_checkpoint = bool(log_checkpoint)
        self.job = job
        super().__init__(name=name or shown(save_dir), save_dir=save_dir, project=project, entity=entity,
                         group=group or (shown(job.sweep_dir) if job.sweep_dir else None),
                         tags=[t[:MAX_TAG] for t in [*(tags or []), *job.overrides]], mode=self.mode,
                         # offline, wandb cannot look a run up: the id alone continues it (wandb sync joins them)
                         resume="allow" if self.mode == "online" else None)
        self._wandb_init.pop("anonymous", None)  # Lightning passes None, which wandb warns has no effect

    @rank_zero_only
    def continue_run(self, run_dir: Path) -> None:
        ids = recorded(run_dir, self.name)
        if ids is None:
            log.info("logger=wandb: %s records no W&B run (it ran without logger=wandb until now): the rest of it "
                     "goes to a new W&B run", run_dir)
            return
        self._id = self._wandb_init["id"] = ids["id"]

    @rank_zero_only
    def begin(self, run_dir: Path, config: dict[str, Any]) -> None:
        import wandb

        if wandb.run is not None:  # an earlier job of this sweep process failed outside fit and left it open
            log.warning("logger=wandb: W&B run %s of this process was still open: ended as failed", wandb.run.id)
            wandb.run.finish(exit_code=1)
        run = self.experiment  # wandb.init
        run.config.update(config, allow_val_change=True)
        if self.job.sweep_dir:
            run.config.update({"sweep": {"dir": self.job.sweep_dir, "job": self.job.number,
                                         "overrides": " ".join(self.job.overrides)}}, allow_val_change=True)
        record(run_dir, self.name, id=run.id, project=run.project, entity=run.entity, mode=self.mode)

    @rank_zero_only
    def finish(self, run_dir: Path, metrics: dict[str, Any], checkpoint: str | None) -> None:
        import wandb

        run = self.experiment
        run.summary.update(final_metrics(metrics))
        for path in report_files(run_dir):  # the run's files folder is uploaded with the run (offline: by wandb sync)
            shutil.copy2(path, Path(run.dir) / path.name)
        if self.log_checkpoint and checkpoint:
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"checkpoint": checkpoint})
            artifact.add_file(checkpoint, policy="immutable")  # read where it lies, not copied to a staging folder
            run.log_artifact(artifact, aliases=["best"])
        run_id, folder = run.id, Path(run.dir).parent
        run.finish()
        if self.mode == "offline":
            log.info("logger=wandb: offline run %s in %s; upload it with: wandb sync %s/wandb/offline-run-*", run_id,
                     folder, shown(run_dir))

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        """Lightning's end of fit and of test: a failure ends the W&B run as failed (else the next job of a
        sweep run in this process would find it open); after a success `finish` ends it."""
        if status != "success" and self._experiment is not None:
            self._experiment.finish(exit_code=1)
