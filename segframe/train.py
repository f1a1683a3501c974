"""`python -m segframe.train [model=fcn16s data=voc_aug ...]`: fit, evaluate the best checkpoint, report.

With `-m` (multirun) each value combination is one run; the sweep directory gets a
summary table of every run's overrides and metrics when the sweep ends. Launchers
(hydra/launcher=joblib, slurm, submitit_local), an Optuna search (hparams_search=optuna_lr_wd)
and which multi-GPU layouts a sweep can use: segframe/experiments/sweep.py and docs/scaling.md, "Sweeps".
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from segframe.core import paths
from segframe.core.cli import run


@hydra.main(config_path=str(paths.CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # imported here, not above: `--help` and `--cfg job` answer without loading torch and Lightning
    from segframe.engine.training import train
    from segframe.experiments import sweep

    def job() -> float:
        sweep.export_submitit_local_ranks()  # a submitit_local task is one of its job's processes
        sweep.check_trainer(cfg.trainer, multirun=HydraConfig.get().mode == RunMode.MULTIRUN)  # before any training
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))

    # the returned mIoU is what optimisation sweepers (e.g. Optuna) maximise
    return run(job)


if __name__ == "__main__":
    main()
