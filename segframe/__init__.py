"""segframe: config-driven semantic segmentation research framework."""

import os

# albumentations checks PyPI for updates on import; research machines are often offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
