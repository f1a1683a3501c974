"""segframe: config-driven semantic segmentation research framework."""

import os

# albumentations checks PyPI for updates on import; research machines are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.2.0"


def __getattr__(name: str):
    """`from segframe import load_model` (segframe.deploy.api), imported on first use (PEP 562): the entry
    points import this package before Hydra parses --help, so `import segframe` must not load torch."""
    if name == "load_model":
        from segframe.deploy.api import load_model

        return load_model
    raise AttributeError(f"module 'segframe' has no attribute {name!r}")
