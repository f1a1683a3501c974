"""`python -m segframe.train [model=fcn16s data=voc_aug ...]`: fit, evaluate the best checkpoint, report.

With `-m` (multirun) each value combination is one run; the sweep directory gets a
summary table of every run's overrides and metrics when the sweep ends.
"""


import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segframe import paths
from segframe.cli import run


@hydra.main(config_path=str(paths.CONF_DIR), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from pathlib import Path

    from segframe.workflow import train

    # the returned mIoU is what optimisation sweepers (e.g. Optuna) maximise
    return run(lambda: train(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
