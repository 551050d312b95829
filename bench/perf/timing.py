"""Timing helpers: repeats, medians, and a description of the machine the figures came from."""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], int], device: torch.device) -> float:
    """Items per second of one call of `fn` (which returns how many items it processed)."""
    sync(device)
    start = time.perf_counter()
    items = fn()
    sync(device)
    return items / (time.perf_counter() - start)


def figure(name: str, samples: list[float], unit: str = "img/s", **extra: Any) -> dict[str, Any]:
    """One measured figure: its median and every repeat."""
    return {"name": name, "unit": unit, "median": statistics.median(samples), "repeats": samples, **extra}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What ran the figures: CPU, cores this process may use, torch threads, GPU."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info
