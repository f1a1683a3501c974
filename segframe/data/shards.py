"""The shard format's public import path, kept for the code and notebooks that import it. Each job
lives in its own module; this file only re-exports them:

- `data/manifest.py`: the manifest contract (build, read, split lookups);
- `data/shard_writer.py`: `write_dataset` (atomic, locked conversion);
- `data/shard_reader.py`: `iter_shard` (streamed, checked reading) and `verify`.
"""

from segframe.core.errors import ConversionInProgress, ManifestError
from segframe.data.manifest import (
                                    FORMAT,
                                    FORMAT_VERSION,
                                    MANIFEST,
                                    empty_classes,
                                    read_manifest,
                                    sha256_file,
                                    shard_urls,
                                    split_info,
)
from segframe.data.shard_reader import iter_shard, verify
from segframe.data.shard_writer import wait_for_conversion, write_dataset

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "ConversionInProgress", "ManifestError", "empty_classes",
           "iter_shard", "read_manifest", "sha256_file", "shard_urls", "split_info", "verify", "wait_for_conversion",
           "write_dataset"]
