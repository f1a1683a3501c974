"""Converters: the only code that reads raw datasets. One module per dataset family.

A source is any object with:
  splits() -> dict[split, list[item]]   cheap listing; items are small and picklable
  load(item) -> RawSample               runs in worker processes
  options() -> dict                     the plain arguments it was built with (for the manifest)
  fingerprint() -> dict                 what identifies the raw input (list files, sizes, seed...)
"""

from __future__ import annotations

from typing import Any, Protocol

from segframe.data.sample import RawSample


class Source(Protocol):
    def splits(self) -> dict[str, list[Any]]: ...

    def load(self, item: Any) -> RawSample: ...

    def options(self) -> dict[str, Any]: ...

    def fingerprint(self) -> dict[str, Any]: ...
