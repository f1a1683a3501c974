"""What every bench part shares: the machine it ran on, the matmul peak, clocks, RSS, child
processes (for a clean peak RSS) and plain-text tables."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import re
import resource
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall clock measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds that fn() takes, its queued GPU work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def _cpuinfo() -> tuple[str, int | None]:
    """(CPU model name, physical cores) from /proc/cpuinfo; (platform's name, None) elsewhere."""
    name, cores = "", set()
    try:
        physical = "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and not name:
                    name = value
                elif key == "physical id":
                    physical = value
                elif key == "core id":
                    cores.add((physical, value))
    except OSError:
        pass
    return name or platform.processor() or platform.machine(), len(cores) or None


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    name, cores = _cpuinfo()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": name, "physical cores": cores, "logical cpus": os.cpu_count(), "usable cpus": usable,
        "torch threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
        "cpu capability": torch.backends.cpu.get_cpu_capability(), "device": str(device),
        "load average": " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?",
    }
    if torch.cuda.is_available():
        index = device.index if device.type == "cuda" and device.index is not None else 0
        props = torch.cuda.get_device_properties(index)
        info.update({"gpu": f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})",
                     "gpus": torch.cuda.device_count(), "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version()})
    else:
        info["gpu"] = "none"
    return info


def machine_line(device: torch.device) -> str:
    m = machine(device)
    cores = f"{m['physical cores']} cores / " if m["physical cores"] else ""
    return (f"{m['cpu']} ({cores}{m['logical cpus']} threads, {m['usable cpus']} usable, {m['cpu capability']}), "
            f"torch {m['torch']} with {m['torch threads']} threads, GPU: {m['gpu']}, device {m['device']}, "
            f"load average {m['load average']}")


def matmul_peak(device: torch.device, dtype: torch.dtype, max_size: int, max_seconds: float = 1.0) -> dict[str, Any]:
    """Best GFLOP/s of square matmuls of doubling size, 256 .. `max_size`, stopping early once the
    next size would take longer than `max_seconds` per product (a CPU without native bf16 runs
    bf16 matmuls 100x slower than fp32). On CUDA fp32 uses TF32 exactly when cuDNN convolutions
    do (`torch.backends.cudnn.allow_tf32`), so the peak matches what the fp32 train step runs."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    best: dict[str, Any] = {"gflops": 0.0, "size": 0}
    try:
        n = 256
        while n <= max_size:
            a = torch.randn(n, n, device=device).to(dtype)
            b = torch.randn(n, n, device=device).to(dtype)
            a @ b
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            once = time.perf_counter() - start
            reps = max(1, min(100, int(0.25 / max(once, 1e-6))))
            start = time.perf_counter()
            for _ in range(reps):
                a @ b
            sync(device)
            per = (time.perf_counter() - start) / reps
            gflops = 2 * n**3 / per / 1e9
            if gflops > best["gflops"]:
                best = {"gflops": gflops, "size": n}
            if per * 8 > max_seconds:
                break
            n *= 2
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    label = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    if device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        label = "fp32 (TF32, as cuDNN convs)"
    return {**best, "dtype": label}


def rss(pid: int | str = "self") -> int | None:
    """Resident set size in bytes now (Linux /proc); None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss() -> int:
    """This process's peak resident set size in bytes (getrusage; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _child(conn: Any, fn: Callable[..., Any], args: tuple) -> None:
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a freshly spawned Python process (its own peak RSS, nothing inherited);
    `fn` must be importable and its result picklable."""
    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args))
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"bench child process for {fn.__name__} died (exit code {process.exitcode})") from None
    process.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in a child process: {value}")
    return value


def median(values: Sequence[float]) -> float:
    values = sorted(values)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def fmt(value: Any, digits: int = 1) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return "-" if value is None else str(value)


_NUMBER = re.compile(r"-|[-+]?[0-9.,]+(e[-+]?[0-9]+)?%?|nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Plain-text table: numbers right-aligned, text left-aligned, columns as wide as needed."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_NUMBER.fullmatch(r[i]) for r in cells[1:]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)).rstrip()

    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])


def mib(n: float | None) -> float:
    return math.nan if n is None else n / 2**20
