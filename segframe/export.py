"""`python -m segframe.export ckpt=PATH format=onnx|torchscript [output=FILE]`: a deployable graph."""

import sys

import hydra
from omegaconf import DictConfig

from segframe.core import paths
from segframe.core.cli import run


@hydra.main(config_path=str(paths.CONF_DIR), config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # imported here, not above: `--help` and `--cfg job` answer without loading torch and onnx
    from segframe.deploy.exporting import export

    code = run(lambda: export(cfg))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
