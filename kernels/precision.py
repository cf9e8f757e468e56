"""The precision policy of :func:`linear_logprobs`, one place for every backend.

- Accumulation: float64 inputs accumulate and return float64; every other dtype (float32, bfloat16,
  float16) accumulates and returns float32.
- Autocast: under ``torch.autocast`` the op follows autocast's rule for a linear layer: floating
  inputs other than float64 are cast to the autocast dtype (so bf16/fp16 matmuls and a float32
  logsumexp), and the kernels then run, forward and backward, with autocast off, so they alone
  decide what runs in which precision. Training under Lightning's ``*-mixed`` precision and a direct
  call under ``torch.autocast`` therefore give the same numbers. (``torch.amp.custom_fwd`` cannot
  express this: its ``cast_inputs`` is one fixed dtype and it binds one device type.)
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation and output dtype for inputs of ``dtype``: float64 stays float64, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def active_autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast casts to on ``device_type`` right now, or None when autocast is off there."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_cast(tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    """``tensor`` as autocast would hand it to a linear layer: float64 is left alone, as autocast does."""
    if dtype is None or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)  # differentiable: the gradient comes back in the tensor's own dtype


def autocast_off(device_type: str):
    """A context that turns autocast off on ``device_type`` (a no-op where autocast does not exist)."""
    if not torch.amp.is_autocast_available(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def autocast_off_in_backward(backward):
    """Decorate an autograd Function's ``backward(ctx, grad)`` to run with autocast off on ``grad``'s
    device, as its forward did (what ``torch.amp.custom_bwd`` does for a ``custom_fwd`` forward): a
    ``loss.backward()`` called inside an autocast region must not change the kernels' dtypes."""

    @functools.wraps(backward)
    def wrapped(ctx, grad, *more):
        with autocast_off(grad.device.type):
            return backward(ctx, grad, *more)

    return wrapped
