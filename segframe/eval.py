"""`python -m segframe.eval ckpt=PATH [data=NAME] [eval.split=val]`: metrics and report for a checkpoint."""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segframe.core import paths
from segframe.core.cli import run


@hydra.main(config_path=str(paths.CONF_DIR), config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # imported here, not above: `--help` and `--cfg job` answer without loading torch and Lightning
    from segframe.engine.evaluating import evaluate

    run(lambda: evaluate(cfg, Path(HydraConfig.get().runtime.output_dir)))


if __name__ == "__main__":
    main()
