"""Helpers the train-step benchmarks share (bench_train_step.py, bench_packing.py): memory, load, layer choice."""

from __future__ import annotations

import re
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
