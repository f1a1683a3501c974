"""Sweeps (`python -m segframe.train -m ...`): which process layouts a sweep can run, refused before
the first job when it cannot work, and the summary when the last job ends (sweep_summary.py).

A sweep runs its jobs in the sweeper's process (basic launcher), in worker processes (joblib),
or as submitit jobs (SLURM, or local processes). A job that trains on several devices needs one
process per device, and Lightning's own DDP launcher starts the extra ones by re-running this
command line, `-m` included: every copy would then run the whole sweep. So inside a sweep the
processes of a job must be started by the launcher (submitit: one task per device; Lightning
reads SLURM's variables, and `export_submitit_local_ranks` gives it the local executor's), and
the other layouts are refused before anything trains.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from segframe.core.cli import fail
from segframe.core.errors import LaunchError
from segframe.experiments import sweep_plot
from segframe.experiments.sweep_summary import summarize, varied_keys

log = logging.getLogger(__name__)


class SweepSummary(Callback):
    """Registered in conf/train.yaml (hydra.callbacks). Before the first job: refuse process layouts
    that cannot work. After the last: write the summary table in the sweep dir."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            check_sweep(config)
        except LaunchError as exc:
            fail(str(exc))
        check_jobs_compose(config)
        continue_optuna_study(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        rows = summarize(sweep_dir)
        log.info("sweep summary:\n%s", (sweep_dir / "summary.md").read_text())
        print(f"sweep summary: {sweep_dir / 'summary.md'} (and summary.csv, summary.png)")
        failed = [r for r in rows if r["status"] != "ok"]
        varied = varied_keys([r["params"] for r in rows])  # a failed run named by what set it apart
        named = lambda r: " ".join(f"{k}={r['params'].get(k, sweep_plot.NOT_SET)}" for k in varied) \
            or r["overrides"]  # noqa: E731
        if failed:  # a sweep that lost runs must not look like a success to a script or a scheduler
            fail(f"{len(failed)} of {len(rows)} runs failed:\n" + "\n".join(
                f"  run {r['run']} ({named(r)}): {r['reason']}" for r in failed[:10])
                + (f"\n  ... and {len(failed) - 10} more" if len(failed) > 10 else "")
                + f"\nevery run is listed in {sweep_dir / 'summary.md'}",
                hint=f"(each run's log holds its traceback: {sweep_dir}/<run>/*.log)")


# --------------------------------------------------------------------------- before the first job


def _jobs(config: DictConfig, loader: Any) -> list[list[str]]:
    """The override lists of the sweep's jobs whose configs differ in composition: the basic sweeper's
    every combination; for another sweeper (Optuna) each value of each discrete sweep once, with the
    other keys at their first value (its numeric ranges are values, they compose alike)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    if str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return BasicSweeper.split_arguments(parsed, None)[0]
    kept = [o for o in parsed if not o.is_sweep_override() or o.is_discrete_sweep()]
    values = {o.get_key_element(): [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
              if o.is_sweep_override() else [o.input_line] for o in kept}
    first = [v[0] for v in values.values()]
    jobs = [first]
    for i, choices in enumerate(values.values()):
        jobs += [first[:i] + [choice] + first[i + 1:] for choice in choices[1:]]
    return jobs


def check_jobs_compose(config: DictConfig) -> None:
    """Compose every job's config before the first one starts, and refuse the sweep, listing them all,
    when any cannot be composed (an unknown experiment, a misspelt key). Hydra's basic sweeper stops at
    the first such job, naming only it; an Optuna search would meet it trials later, after hours of
    training. Only for those two sweepers: another's parameters have their own syntax."""
    from hydra.core.global_hydra import GlobalHydra

    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default=""))
    if not GlobalHydra.instance().is_initialized() or not target.endswith((".BasicSweeper", "OptunaSweeper")):
        return
    loader = GlobalHydra.instance().config_loader()
    try:
        jobs = _jobs(config, loader)
    except Exception:  # noqa: BLE001 (a sweep Hydra cannot parse: the sweeper itself says why)
        return
    refused = []
    for i, job in enumerate(jobs):
        try:
            loader.load_sweep_config(master_config=config, sweep_overrides=list(job))
        except Exception as exc:  # noqa: BLE001 (any composition error: Hydra's, OmegaConf's, a resolver's)
            refused.append((i, job, exc))
    if refused:
        first = refused[0][2]
        fail(f"{len(refused)} of the sweep's {len(jobs)} job configs cannot be composed, so no job was run:\n"
             + "\n".join(f"  {' '.join(job)}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                         for _, job, exc in refused)
             + f"\nfix or drop those values and run the sweep again. The first error in full:\n{first}",
             hint="(nothing was run)")


def continue_optuna_study(config: DictConfig) -> None:
    """`hydra.sweeper.storage=sqlite:///...` keeps an Optuna study, and the same command later continues
    it. The sampler's seed is fixed (a search is repeatable), so a continued study would draw the trials
    it already has: offset the seed by the trials the study holds (in the config the sweeper is about
    to be made from), so that continuing adds new points, and the same sequence of commands still gives
    the same trials."""
    sweeper = OmegaConf.select(config, "hydra.sweeper")
    if sweeper is None or "Optuna" not in str(sweeper.get("_target_", "")) or not sweeper.get("storage"):
        return
    seed = OmegaConf.select(sweeper, "sampler.seed")
    if seed is None:
        return
    import optuna

    summaries = optuna.study.get_all_study_summaries(storage=sweeper.storage)
    held = next((s.n_trials for s in summaries if s.study_name == sweeper.study_name), 0)
    if held:
        with open_dict(config):
            sweeper.sampler.seed = int(seed) + held
        log.info("continuing Optuna study %s in %s: it holds %d trials, so the sampler seed is %d + %d = %d "
                 "(new points, not its first trials again)", sweeper.study_name, sweeper.storage, held, seed, held,
                 sweeper.sampler.seed)


# --------------------------------------------------------------------------- process layouts


def _one_of_several_processes() -> str | None:
    """The launcher that started this process as one of several copies (torchrun, srun -n N), if any."""
    env = os.environ
    if "LOCAL_RANK" in env or int(env.get("WORLD_SIZE") or 1) > 1:
        return "torchrun (or another launcher that sets LOCAL_RANK/WORLD_SIZE)"
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS") or 1) > 1:
        return f"srun ({env['SLURM_STEP_NUM_TASKS']} tasks)"
    return None


def _alternatives(n: int) -> str:
    return (f"For {n} devices per run inside a sweep, let the launcher start each run's {n} processes: on a SLURM "
            f"cluster `python -m segframe.train -m hydra/launcher=slurm hydra.launcher.gpus_per_node={n} trainer=ddp "
            f"...` (one task per GPU; Lightning reads the SLURM environment and starts no process itself); on one "
            f"machine `python -m segframe.train -m hydra/launcher=submitit_local hydra.launcher.tasks_per_node={n} "
            f"hydra.launcher.gpus_per_node={n} hydra.sweeper.max_batch_size=1 trainer=ddp trainer.devices={n} ...` "
            f"(the runs one after another, each on {n} devices). Or leave out -m and start one training per command "
            f"(trainer=ddp, torchrun and srun work there). Nothing was trained.")


def check_sweep(config: DictConfig) -> None:
    """Before the first job of a sweep (in the sweeper's process): refuse layouts that cannot work."""
    launcher = _one_of_several_processes()
    if launcher:
        copies = int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_STEP_NUM_TASKS") or 2)
        raise LaunchError(
            f"this sweep (-m) was started by {launcher} as one of several processes: each copy would run the "
            f"whole sweep, in its own sweep directory and, with Optuna, on different trials. Start the sweep as one "
            f"process. " + _alternatives(copies))
    trainer_cfg = config.get("trainer")
    if trainer_cfg is None:
        return
    target = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
    if "submitit" not in target:  # jobs run here (basic, joblib): this machine's devices are the jobs' devices
        check_trainer(trainer_cfg, multirun=True)
        return
    devices = trainer_cfg.get("devices")
    tasks = OmegaConf.select(config, "hydra.launcher.tasks_per_node", default=1)
    gpus = OmegaConf.select(config, "hydra.launcher.gpus_per_node", default=None)
    if isinstance(devices, int) and devices != tasks:
        raise LaunchError(
            f"trainer.devices={devices} but hydra.launcher.tasks_per_node={tasks}: with a submitit launcher every "
            f"training process is a task, one per device, so the two must agree: e.g. trainer=ddp trainer.devices="
            f"{tasks}, or hydra.launcher.tasks_per_node={devices}"
            f"{f' hydra.launcher.gpus_per_node={devices}' if trainer_cfg.get('accelerator') != 'cpu' else ''}. "
            f"Nothing was trained.")
    if target.endswith("LocalLauncher") and not gpus and trainer_cfg.get("accelerator") != "cpu":
        import torch

        if torch.cuda.is_available():
            n = devices if isinstance(devices, int) else tasks
            raise LaunchError(
                f"hydra/launcher=submitit_local gives each job CUDA_VISIBLE_DEVICES=0..gpus_per_node-1, so without "
                f"hydra.launcher.gpus_per_node its jobs see no GPU. Set hydra.launcher.gpus_per_node={n} (every job "
                f"that runs at the same time gets the same GPUs: add hydra.sweeper.max_batch_size=1 to run the jobs "
                f"one after another), or trainer.accelerator=cpu. Nothing was trained.")


def check_trainer(trainer_cfg: DictConfig, multirun: bool) -> None:
    """Refuse, before any training, a trainer whose extra processes this command cannot start correctly.
    Builds the Trainer Lightning would build (no loggers, callbacks or model) and looks at its launcher."""
    from pytorch_lightning.strategies.launchers import _MultiProcessingLauncher, _SubprocessScriptLauncher

    trainer = _probe_trainer(trainer_cfg)
    if trainer is None:
        return
    strategy = trainer.strategy
    launcher = getattr(strategy, "launcher", None)
    processes = int(getattr(strategy, "num_processes", 1)) * int(getattr(strategy, "num_nodes", 1))
    name = trainer_cfg.get("strategy", "auto")
    if isinstance(launcher, _MultiProcessingLauncher) and processes > 1:
        raise LaunchError(
            f"trainer.strategy={name} trains in {processes} spawned processes and the confusion matrix of the final "
            f"evaluation stays in them, so the run could not write its report. For a single run use trainer=ddp "
            f"(strategy ddp: one process per device, started by Lightning, torchrun or srun). "
            + (_alternatives(processes) if multirun else "Nothing was trained."))
    if (multirun and isinstance(launcher, _SubprocessScriptLauncher) and launcher.num_processes > 1
            and not strategy.cluster_environment.creates_processes_externally):
        raise LaunchError(
            f"trainer.strategy={name} with {launcher.num_processes} devices inside a multirun sweep (-m): Lightning "
            f"starts the other {launcher.num_processes - 1} process(es) by re-running this command line, -m included, "
            f"so every process would run the whole sweep (duplicate runs, a second sweep directory, a wrong summary; "
            f"with joblib or Optuna the copies would not even train the same runs). "
            + _alternatives(launcher.num_processes))


def _probe_trainer(trainer_cfg: DictConfig) -> Any:
    """The Trainer `trainer_cfg` gives, quietly; None when it cannot be built (the real one will say why)."""
    from hydra.utils import instantiate

    quiet = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return instantiate(trainer_cfg, logger=False, callbacks=[], enable_checkpointing=False,
                               enable_progress_bar=False, enable_model_summary=False)
    except Exception:  # noqa: BLE001 (a misconfigured trainer fails again, with Lightning's message, in train)
        return None
    finally:
        quiet.setLevel(level)


def export_submitit_local_ranks() -> None:
    """submitit's local executor starts `tasks_per_node` processes per job and describes them in
    SUBMITIT_LOCAL_* variables, which Lightning does not read (it reads SLURM's). Export the
    torch.distributed ones so that Lightning takes the tasks as the job's processes and starts none."""
    env = os.environ
    if env.get("SUBMITIT_EXECUTOR") != "local" or int(env.get("SUBMITIT_LOCAL_NTASKS") or 1) < 2 or "LOCAL_RANK" in env:
        return
    job = int(env.get("SUBMITIT_LOCAL_JOB_ID") or 0)  # the job's controller pid, shared by its tasks
    env.update(LOCAL_RANK=env["SUBMITIT_LOCAL_LOCALID"], NODE_RANK="0", WORLD_SIZE=env["SUBMITIT_LOCAL_NTASKS"],
               MASTER_ADDR="127.0.0.1", MASTER_PORT=env.get("MASTER_PORT") or str(20000 + job % 10000))  # below the ephemeral ports
