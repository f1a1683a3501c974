"""`python -m segframe.convert data=NAME [verify=true] [overwrite=true]`: raw dataset -> shards."""

import sys

import hydra
from omegaconf import DictConfig

from segframe import paths
from segframe.cli import run


@hydra.main(config_path=str(paths.CONF_DIR), config_name="convert", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from segframe.workflow import convert

    code = run(lambda: convert(cfg))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
