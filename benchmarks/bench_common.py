"""Helpers the benchmark scripts share: memory, machine load, device name, layer choice, the bare LM-head GEMM."""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch


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


class _BareGemm(torch.autograd.Function):
    """The LM-head GEMM alone: 1 matmul forward, 2 backward (the logits reused as their own gradient)."""

    @staticmethod
    def forward(ctx, h, w):
        logits = h @ w.t()  # [N, V]
        ctx.save_for_backward(h, w, logits)
        return logits[:, 0].float()  # [N]: a per-row output, so it is driven like the others

    @staticmethod
    def backward(ctx, _grad):
        h, w, logits = ctx.saved_tensors
        grad_h = logits @ w if ctx.needs_input_grad[0] else None  # [N, d]
        grad_w = logits.t() @ h if ctx.needs_input_grad[1] else None  # [V, d]
        return grad_h, grad_w


def bare_gemm(h, w, t):
    """The bare LM-head GEMM of the same shape as a log-prob op (the floor it is compared with)."""
    if not (h.requires_grad or w.requires_grad):
        return h.reshape(-1, h.shape[-1]) @ w.t()
    return _BareGemm.apply(h.reshape(-1, h.shape[-1]), w).reshape(t.shape)
