"""What CPU this process runs on, from /proc/cpuinfo (Linux) with the platform module's answer
elsewhere: the model card names it, and segframe.engine.speed keys its probe cache and reads the bf16
flags from it. Torch-free."""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo_field(name: str) -> str | None:
    """The first `name : value` line's value in /proc/cpuinfo, or None (no such file or field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The CPU model ("AMD EPYC ..."), or the platform's name for it."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (avx2, avx512_bf16, amx_bf16, ...), or None where they cannot be read."""
    flags = _cpuinfo_field("flags")
    return set(flags.split()) if flags is not None else None
