"""Fused LM-head log-prob kernels (installed as ``lit_idpo.kernels``).

Public API: :func:`linear_logprobs` and its :class:`LinearLogprobsOptions`. Imports only torch (triton
on first use of that backend). Design notes: docs/kernels.md.
"""

from .linear_logprobs import BACKENDS, LinearLogprobsOptions, linear_logprobs, naive_linear_logprobs

__all__ = ["BACKENDS", "LinearLogprobsOptions", "linear_logprobs", "naive_linear_logprobs"]
