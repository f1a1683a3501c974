"""`trainer.precision=auto` and `module.channels_last=auto`: the speed knobs chosen from what the
device can do, since defaults measured on one CPU are wrong on the next (docs/performance.md).

Two settings are candidates: fp32 in NCHW (always correct, the fallback) and bf16 autocast with
channels_last weights and inputs (tensor cores on a GPU; bf16 matrix or vector units on a CPU).
- CUDA: bf16 + channels_last when the GPU supports bf16, else fp32 NCHW.
- CPU without `amx_bf16` / `avx512_bf16` in /proc/cpuinfo: fp32 NCHW (bf16 is emulated there, and
  was measured 30x slower on an AVX2 EPYC).
- CPU with them: a probe of about a second times one conv training step both ways, interleaved,
  and picks bf16 + channels_last when it is at least PROBE_MARGIN faster. The verdict is cached per
  machine (CPU model, flags, torch version, thread count), so one machine always chooses alike.
An explicit value of either setting always wins over the choice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from segframe.core.errors import ConfigError
from segframe.core.host import cpu_flags, cpu_name
from segframe.engine.speed_probe import probe

try:
    import fcntl  # POSIX: one process probes while the others (DDP ranks, sweep jobs) wait for its verdict
except ImportError:  # Windows: each process may probe once on first use
    fcntl = None

log = logging.getLogger("segframe")

AUTO = "auto"
FP32, BF16 = "32-true", "bf16-mixed"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # matrix (AMX) and vector bf16 units
PROBE_MARGIN = 1.10  # below this the probe's difference is within this machine's noise (±10%)
NO_BF16_UNITS = f"CPU without bf16 units (none of {', '.join(BF16_FLAGS)} in /proc/cpuinfo)"


@dataclass(frozen=True)
class Choice:
    precision: str
    channels_last: bool
    reason: str  # why: the device, the flags or the probe's figures, or "set explicitly"

    def record(self) -> dict[str, Any]:
        """What metrics.json keeps of it."""
        return asdict(self)


def cache_file() -> Path:
    """Where the probe's verdicts are kept: $SEGFRAME_CACHE, else ~/.cache/segframe."""
    root = os.environ.get("SEGFRAME_CACHE") or Path.home() / ".cache" / "segframe"
    return Path(root) / "speed-probe.json"


@contextlib.contextmanager
def _probe_lock(path: Path):
    """Held while reading, probing and writing the cache: processes started together (DDP ranks)
    then probe once, on an otherwise idle CPU, and all read the same verdict."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a+b")  # noqa: SIM115 (held until the end of the block)
    except OSError:  # nowhere to cache: probe unlocked
        yield
        return
    with handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


PROBE_METHOD = "1 thread, thread CPU time"  # kept with each cache entry: one of another method is measured again
REFRESH = "SEGFRAME_SPEED_PROBE"  # =refresh: measure again now, whatever the cache holds
# processes started together (DDP ranks, torchrun's or Lightning's) take the first one's measurement, cached
# or not, when it is this recent: the ranks of one run must not choose different precisions
SHARED_S = 120
UNCACHED = " | measured, not cached"  # the key suffix of the latest measurement that was not cached


def _load() -> tuple[float, int] | None:
    """The 1-minute load average and this machine's CPU count (None where the OS does not say)."""
    try:
        return round(os.getloadavg()[0], 2), os.cpu_count() or 1
    except (AttributeError, OSError):
        return None


def _borderline(ms: dict[str, Any]) -> bool:
    """A ratio within 10% of the margin: close enough that another measurement may decide otherwise."""
    return abs(ms["fp32"] / max(ms["bf16+channels_last"], 1e-9) / PROBE_MARGIN - 1) < 0.10


def _not_cacheable(entry: dict[str, Any]) -> str | None:
    """Why a fresh measurement is not cached (and an old one not reused): taken while more processes
    wanted to run than there are CPUs, or too close to the margin to stand for this machine."""
    load, cpus = entry.get("load"), entry.get("cpus") or 1
    if load is not None and load > cpus:
        return f"measured under load ({load} on {cpus} CPUs)"
    if _borderline(entry):
        return "a borderline ratio, measured each time"
    return None


def unusable(entry: dict[str, Any] | None) -> str | None:
    """Why a cache entry is not used, and the probe runs again: what would not be cached today."""
    if entry is None:
        return "nothing cached for this machine"
    if os.environ.get(REFRESH) == "refresh":
        return f"{REFRESH}=refresh"
    if entry.get("method") != PROBE_METHOD:
        return ("cached by the earlier wall-clock probe, which a busy machine misleads (two busy processes turned "
                "2.4x into 1.08x)")
    return _not_cacheable(entry)


def _seconds_since(measured_at: str) -> float:
    return max(0.0, time.time() - datetime.fromisoformat(measured_at).timestamp())


def _age(measured_at: str) -> str:
    seconds = _seconds_since(measured_at)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def cache_key(flags: set[str] | None) -> str:
    """This machine as the cache knows it: the probe runs in one thread, so the thread count is not part of it."""
    return f"{cpu_name()} | bf16 flags {sorted((flags or set()) & set(BF16_FLAGS))} | torch {torch.__version__}"


def cached(flags: set[str] | None, suffix: str = "") -> dict[str, Any] | None:
    """This machine's cache entry as it stands (None when there is none); with `suffix` UNCACHED, its
    latest measurement that was not cached."""
    return _read_cache().get(cache_key(flags) + suffix)


def _read_cache() -> dict[str, Any]:
    """The cache file's entries ({} when it is missing or unreadable)."""
    try:
        cache = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _just_measured(flags: set[str] | None) -> dict[str, Any] | None:
    """A measurement of this machine from the last SHARED_S seconds, cached or not: another process
    started with this one (a DDP rank) took it."""
    for entry in (cached(flags), cached(flags, UNCACHED)):
        if entry and entry.get("method") == PROBE_METHOD and entry.get("measured_at") and \
                _seconds_since(entry["measured_at"]) < SHARED_S:
            return entry
    return None


def measure(flags: set[str] | None) -> tuple[dict[str, Any], str]:
    """Probe now, and cache the result unless `_not_cacheable` says otherwise. Returns the entry and
    where it came from, for the log."""
    before = _load()
    entry: dict[str, Any] = {**probe(), "method": PROBE_METHOD,
                             "measured_at": datetime.now().isoformat(timespec="seconds")}
    after = _load()
    if before is not None and after is not None:
        entry["load"], entry["cpus"] = max(before[0], after[0]), before[1]
    why_not = _not_cacheable(entry)
    path = cache_file()
    cache = _read_cache()
    # entries of another probe method go: their keys (with a thread count) would never be read again
    cache = {k: v for k, v in cache.items() if isinstance(v, dict) and v.get("method") == PROBE_METHOD}
    # not cached, it is still kept apart for SHARED_S seconds: the other ranks of this run take it
    cache[cache_key(flags) + (UNCACHED if why_not else "")] = entry
    try:  # a read-only home only costs the next run another probe
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(path)
    except OSError as exc:
        log.warning("speed probe: could not cache the result in %s (%s)", path, exc)
    return entry, f"measured now, not cached: {why_not}" if why_not else f"measured now and cached in {path}"


def _probed_cpu_choice(flags: set[str] | None) -> Choice:
    """The CPU verdict from the cached probe, measured (and cached) when the cache has no usable entry."""
    path = cache_file()
    with _probe_lock(path):
        entry = cached(flags)
        why = unusable(entry)
        shared = _just_measured(flags) if why is not None else None
        if entry is not None and why is None:
            ms = entry
            where = f"cached {_age(ms['measured_at'])}, at load {ms.get('load', '?')} on {ms.get('cpus', '?')} CPUs"
        elif shared is not None:
            ms = shared
            where = (f"measured {_age(ms['measured_at'])} by a process started with this one (the ranks of a run "
                     f"choose alike), at load {ms.get('load', '?')} on {ms.get('cpus', '?')} CPUs")
        else:
            ms, where = measure(flags)
            where += f"; the cache was not used: {why}" if entry is not None else ""
    ratio = ms["fp32"] / max(ms["bf16+channels_last"], 1e-9)
    figures = (f"probe: fp32 NCHW {ms['fp32']} ms, bf16 + channels_last {ms['bf16+channels_last']} ms per step "
               f"in one thread; {where}")
    if ratio >= PROBE_MARGIN:
        return Choice(BF16, True, f"CPU with bf16 units, {ratio:.2f}x faster in bf16 ({figures})")
    return Choice(FP32, False, f"CPU bf16 only {ratio:.2f}x (< {PROBE_MARGIN}x) of fp32 ({figures})")


def _verdict(ms: dict[str, Any]) -> str:
    ratio = ms["fp32"] / max(ms["bf16+channels_last"], 1e-9)
    return f"{'bf16 + channels_last' if ratio >= PROBE_MARGIN else 'fp32 NCHW'} ({ratio:.2f}x)"


def now_and_cached(device_type: str) -> str:
    """For `python -m segframe.bench --only knobs`: what auto picks here now (a fresh probe, not
    cached), what the cache holds and whether it would be used, and a flag when the two disagree."""
    flags = cpu_flags()
    if device_type != "cpu" or bf16_units(flags) is False:
        best = capability(device_type)
        return f"auto (trainer.precision=auto module.channels_last=auto) picks here: {best.precision}, " \
               f"channels_last {best.channels_last} ({best.reason}; no probe, nothing cached)"
    fresh = probe()
    load = _load()
    entry = cached(flags)
    line = (f"auto (trainer.precision=auto module.channels_last=auto), probed now: {_verdict(fresh)}, fp32 NCHW "
            f"{fresh['fp32']} ms, bf16 + channels_last {fresh['bf16+channels_last']} ms per step in one thread "
            f"(load {load[0] if load else '?'} on {load[1] if load else '?'} CPUs)\n")
    if entry is None:
        return line + f"the cache ({cache_file()}) holds nothing for this machine: a run would probe"
    why = unusable(entry)
    line += (f"the cache ({cache_file()}): {_verdict(entry)}, measured {entry.get('measured_at', 'at an unknown time')} "
             f"at load {entry.get('load', '?')}; " + (f"a run would measure again ({why})" if why else "a run uses it"))
    if why is None and _verdict(entry).split(" (")[0] != _verdict(fresh).split(" (")[0]:
        line += (f"\nDISAGREEMENT: the cache says {_verdict(entry)}, a probe now {_verdict(fresh)}; "
                 f"{REFRESH}=refresh on the next run measures again")
    return line


def bf16_units(flags: set[str] | None) -> bool | None:
    """Whether CPU `flags` (host.cpu_flags()) list bf16 matrix or vector units; None where the flags
    could not be read. Without them bf16 is emulated, 10-30x slower than fp32."""
    return None if flags is None else bool(flags & set(BF16_FLAGS))


def capability(device_type: str) -> Choice:
    """The setting this kind of device trains fastest in (see the module docstring)."""
    if device_type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Choice(BF16, True, f"CUDA GPU with bf16 ({torch.cuda.get_device_name()})")
        return Choice(FP32, False, "CUDA GPU without bf16")
    if device_type != "cpu":
        return Choice(FP32, False, f"{device_type}: no measured choice, fp32 NCHW")
    flags = cpu_flags()
    if bf16_units(flags) is False:
        return Choice(FP32, False, NO_BF16_UNITS)
    return _probed_cpu_choice(flags)


def resolve(precision: Any, channels_last: Any, device_type: str) -> Choice:
    """trainer.precision and module.channels_last with `auto` replaced by the device's choice; an
    explicit value wins. The device's choice is made (and probed) only when one of them is auto."""
    if not (channels_last == AUTO or isinstance(channels_last, bool)):
        raise ConfigError(f"module.channels_last must be true, false or auto, got {channels_last!r}")
    if precision != AUTO and channels_last != AUTO:
        return Choice(str(precision), bool(channels_last), "set explicitly")
    best = capability(device_type)
    chosen = Choice(best.precision if precision == AUTO else str(precision),
                    best.channels_last if channels_last == AUTO else bool(channels_last),
                    f"auto: {best.reason}" + ("" if precision == AUTO and channels_last == AUTO else
                                              "; the other knob was set explicitly"))
    log.info("speed knobs: trainer.precision=%s module.channels_last=%s (%s)", chosen.precision,
             chosen.channels_last, chosen.reason)
    return chosen


def changed_since(recorded: dict[str, Any] | None, chosen: Choice) -> str | None:
    """For a resumed run: how this session's knobs differ from those its checkpoint trained with
    (`recorded`: that run's Choice.record()), as a sentence with the settings that keep the old ones;
    None when they agree or the checkpoint recorded none. `auto` chooses again on every start, so a
    run moved to another machine continues in what is fast there rather than in an emulated bf16."""
    if not recorded:
        return None
    before = (str(recorded.get("precision")), bool(recorded.get("channels_last")))
    if before == (chosen.precision, chosen.channels_last):
        return None
    return (f"this run trained with trainer.precision={before[0]} module.channels_last={str(before[1]).lower()} "
            f"({recorded.get('reason', '')}); it continues with trainer.precision={chosen.precision} "
            f"module.channels_last={str(chosen.channels_last).lower()} ({chosen.reason}). Resume with "
            f"trainer.precision={before[0]} module.channels_last={str(before[1]).lower()} to keep the run's own")


def device_type(accelerator: Any) -> str:
    """The device a Trainer with `accelerator` (auto | cpu | gpu | cuda | ...) trains on."""
    accelerator = str(accelerator or AUTO).lower()
    if accelerator in (AUTO, "gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator
