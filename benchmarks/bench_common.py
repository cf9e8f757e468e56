"""Helpers the benchmark scripts share: memory, machine load, device name, layer choice."""

from __future__ import annotations

import re
import time
from pathlib import Path


def rss_kb(field: str) -> int:
    """This process's ``VmRSS`` (now) or ``VmHWM`` (peak) in KiB, from /proc/self/status."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def spread_layers(num_layers: int, k: int) -> list:
    """``k`` intermediate layers spread evenly over a ``num_layers``-block model."""
    return [round(num_layers * (i + 1) / (k + 1)) for i in range(k)]


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them (other jobs slow a CPU benchmark)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model name and torch's thread count."""
    import platform

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            name = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({torch.get_num_threads()} threads)"


def cpu_idle_fraction(interval: float = 1.0) -> float:
    """Share of all cores' time spent idle over ``interval`` seconds (from /proc/stat)."""

    def read():
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return values[3] + values[4], sum(values)  # idle + iowait, total

    idle0, total0 = read()
    time.sleep(interval)
    idle1, total1 = read()
    return (idle1 - idle0) / max(1, total1 - total0)


def wait_for_idle_cpu(max_wait: float, threshold: float = 0.85) -> bool:
    """On a shared machine: wait (at most ``max_wait`` s) until other processes leave the CPU idle."""
    deadline = time.time() + max_wait
    while time.time() < deadline:
        if cpu_idle_fraction() >= threshold:
            return True
    return False
