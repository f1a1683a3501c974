"""`python -m segframe.predict ckpt=PATH input=FILE|DIR|GLOB [output=DIR]`: masks and overlays."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from segframe.core import paths
from segframe.core.cli import run


@hydra.main(config_path=str(paths.CONF_DIR), config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # imported here, not above: `--help` and `--cfg job` answer without loading the converters and torch
    from segframe.deploy.prediction import predict

    code = run(lambda: predict(cfg, Path(HydraConfig.get().runtime.output_dir)))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
