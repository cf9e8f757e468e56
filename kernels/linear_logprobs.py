"""Per-token log-probabilities through an LM head, without materialising the logits.

    logprob[r] = log_softmax(hidden[r] @ weight.T)[targets[r]]

The user-facing layer over the backends: it validates the input, flattens leading dimensions, drops
``ignore_index`` rows, applies the precision policy (:mod:`.precision`: autocast, accumulation dtype)
and dispatches to ``naive`` (eager reference, materialises ``[rows, V]``), ``torch`` (chunked, the CPU
path), ``triton`` (fused; CPU only under ``TRITON_INTERPRET=1``) or ``auto`` (triton on CUDA, torch
elsewhere). Stack the rows of every layer of a batch into one call: the weight is streamed once.
Design notes: docs/kernels.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .precision import accumulation_dtype, active_autocast_dtype, autocast_cast, autocast_off

BACKENDS = ("auto", "naive", "torch", "triton")


@dataclass(frozen=True)
class LinearLogprobsOptions:
    """Non-tensor options of :func:`linear_logprobs`, passed down to the backends as one object.

    Attributes:
        ignore_index: target value that marks a row to skip; such rows give exactly 0 and no gradient.
        backend: one of ``"auto"``, ``"naive"``, ``"torch"``, ``"triton"``.
        chunk_rows: rows per chunk of the ``torch`` backend (``None``: its own heuristic). Larger chunks
            mean fewer, larger matmuls but a larger ``[chunk_rows, V]`` working tile.
        validate_targets: check that every target is in ``[0, V)`` or ``ignore_index``. This costs one
            device-to-host sync; turn it off only where targets are known to be valid.
    """

    ignore_index: int = -100
    backend: str = "auto"
    chunk_rows: Optional[int] = None
    validate_targets: bool = True

    def __post_init__(self):
        # Checked here, once, for every backend: a bad option fails where it is written, not inside
        # whichever backend happens to read it.
        if self.backend not in BACKENDS:
            raise ValueError(f"linear_logprobs: unknown backend={self.backend!r}; choose one of {BACKENDS}.")
        if self.chunk_rows is not None and (
            not isinstance(self.chunk_rows, int) or isinstance(self.chunk_rows, bool) or self.chunk_rows < 1
        ):
            raise ValueError(
                f"linear_logprobs: options.chunk_rows must be a positive int or None, got {self.chunk_rows!r}.")
        if not isinstance(self.ignore_index, int) or isinstance(self.ignore_index, bool):
            raise ValueError(f"linear_logprobs: options.ignore_index must be an int, got {self.ignore_index!r}.")


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """Tensor checks (the options check themselves in LinearLogprobsOptions.__post_init__)."""
    if not all(isinstance(x, torch.Tensor) for x in (hidden, weight, targets)):
        raise ValueError("linear_logprobs: hidden, weight and targets must all be torch.Tensor.")
    if not hidden.is_floating_point():
        raise ValueError(f"linear_logprobs: hidden must be a floating-point tensor, got dtype {hidden.dtype}.")
    if not weight.is_floating_point():
        raise ValueError(f"linear_logprobs: weight must be a floating-point tensor, got dtype {weight.dtype}.")
    if weight.dim() != 2:
        raise ValueError(
            f"linear_logprobs: weight must be [V, d] (an LM head without bias), got shape {tuple(weight.shape)}.")
    if hidden.dim() < 1 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear_logprobs: hidden's last dimension ({tuple(hidden.shape)}) must equal weight's hidden size "
            f"d={weight.shape[1]} (weight is [V, d] = {tuple(weight.shape)})."
        )
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"linear_logprobs: targets must be an integer tensor (int64), got dtype {targets.dtype}.")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"linear_logprobs: targets shape {tuple(targets.shape)} must equal hidden's leading shape "
            f"{tuple(hidden.shape[:-1])}."
        )
    if not (hidden.device == weight.device == targets.device):
        raise ValueError(
            f"linear_logprobs: hidden, weight and targets must be on one device, got {hidden.device}, "
            f"{weight.device}, {targets.device}."
        )


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return backend


def naive_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eager reference: materialises the ``[N, V]`` logits. ``hidden [N, d]``, ``targets [N]`` valid."""
    logits = (hidden @ weight.t()).to(accumulation_dtype(hidden.dtype))  # [N, V]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]


def _dispatch(backend: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, options) -> torch.Tensor:
    if backend == "naive":
        return naive_linear_logprobs(hidden, weight, targets)
    if backend == "torch":
        from .torch_chunked import torch_linear_logprobs

        return torch_linear_logprobs(hidden, weight, targets, options)
    # backend == "triton"
    if hidden.device.type != "cuda":
        import os

        if os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(
                "linear_logprobs: backend='triton' on a CPU tensor needs the Triton interpreter; set "
                "TRITON_INTERPRET=1 before triton is imported, or use backend='torch' (the CPU path)."
            )
    from .triton_fused import triton_linear_logprobs

    return triton_linear_logprobs(hidden, weight, targets, options)


_DEFAULT_OPTIONS = LinearLogprobsOptions()


def _resolve_options(options: Optional[LinearLogprobsOptions]) -> LinearLogprobsOptions:
    if options is None:
        return _DEFAULT_OPTIONS
    if not isinstance(options, LinearLogprobsOptions):
        raise TypeError(
            f"linear_logprobs: options must be a LinearLogprobsOptions or None, got {type(options).__name__}.")
    return options


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    options: Optional[LinearLogprobsOptions] = None,
) -> torch.Tensor:
    """Log-probability of each target token under ``log_softmax(hidden @ weight.T)``, fused.

    Args:
        hidden: ``[..., d]`` hidden states (float64, float32, bfloat16 or float16).
        weight: ``[V, d]`` LM-head weight (no bias). Either input may be frozen.
        targets: ``[...]`` int64 token ids, same leading shape as ``hidden``; ``options.ignore_index``
            skips a row (it yields exactly 0 and receives no gradient).
        options: :class:`LinearLogprobsOptions` (backend, ignore_index, chunk_rows, validate_targets);
            None for the defaults.

    Precision (:mod:`lit_idpo.kernels.precision`): float64 inputs give float64; anything else
    accumulates in and returns float32. Mixed dtypes compute in the wider one. Under
    ``torch.autocast`` the inputs (except float64) are cast to the autocast dtype and the kernels run
    with autocast off, forward and backward, exactly as in mixed-precision training.

    Returns:
        ``[...]`` log-probs, differentiable with respect to ``hidden`` and ``weight``.

    Raises:
        ValueError: for a target outside ``[0, V)`` other than ``ignore_index``, mismatched shapes or
            devices, a non-floating ``hidden`` or ``weight``, or an unknown backend.
        TypeError: for ``options`` that is not a :class:`LinearLogprobsOptions`.
    """
    options = _resolve_options(options)
    _check_inputs(hidden, weight, targets)
    device_type = hidden.device.type
    autocast_dtype = active_autocast_dtype(device_type)
    with autocast_off(device_type):
        hidden, weight = autocast_cast(hidden, autocast_dtype), autocast_cast(weight, autocast_dtype)
        return _linear_logprobs(hidden, weight, targets, options)


def _linear_logprobs(hidden, weight, targets, options: LinearLogprobsOptions) -> torch.Tensor:
    """The op after validation and autocast: flatten, drop ignored rows, dispatch."""
    backend = _resolve_backend(options.backend, hidden.device)
    # Mixed dtypes (e.g. bf16 activations against an fp32 master weight, outside autocast): compute
    # in the wider one rather than silently narrowing either input.
    if hidden.dtype != weight.dtype:
        common = torch.promote_types(hidden.dtype, weight.dtype)
        hidden, weight = hidden.to(common), weight.to(common)
    out_dtype = accumulation_dtype(hidden.dtype)

    lead_shape = targets.shape
    vocab = weight.shape[0]
    hidden_2d = hidden.reshape(-1, hidden.shape[-1])  # [N, d]
    targets_1d = targets.reshape(-1).long()  # [N]
    keep = targets_1d != options.ignore_index  # [N]
    if options.validate_targets and targets_1d.numel() > 0:
        bad = keep & ((targets_1d < 0) | (targets_1d >= vocab))
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"linear_logprobs: targets must lie in [0, V={vocab}) or equal ignore_index="
                f"{options.ignore_index}; flat row {first} has target {int(targets_1d[first])}."
            )

    out = torch.zeros(targets_1d.shape, dtype=out_dtype, device=hidden.device)  # [N]
    if targets_1d.numel() == 0:
        return out.reshape(lead_shape)
    all_kept = bool(keep.all())
    if all_kept:
        return _dispatch(backend, hidden_2d, weight, targets_1d, options).reshape(lead_shape)
    rows = keep.nonzero().squeeze(-1)  # [N_kept]
    if rows.numel() == 0:
        # Every row ignored: still connect the graph (through an empty sum, which is exactly 0 and
        # NaN-proof) so that backward() yields zero gradients instead of raising.
        return (out + hidden_2d[:0].sum().to(out_dtype) + weight[:0].sum().to(out_dtype)).reshape(lead_shape)
    kept = _dispatch(backend, hidden_2d.index_select(0, rows), weight, targets_1d.index_select(0, rows), options)
    return out.index_put((rows,), kept).reshape(lead_shape)
