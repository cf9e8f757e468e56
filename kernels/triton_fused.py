"""The ``triton`` backend of :func:`linear_logprobs`: fused Triton kernels, never building ``[N, V]`` logits.

Forward: each program walks its share of the vocabulary in tiles with an online logsumexp (the
vocabulary is split over a second grid axis when there are too few row blocks) and saves the row
max m and log s = lse - m. Backward: one kernel over (row block x vocab tile) recomputes the logit
tile, forms dz = g * (onehot - softmax) and adds dz @ W and dz^T @ h into float32 gradient buffers
with atomics (so gradients are not bitwise reproducible). bf16/fp16 dots accumulate in float32.
Under the Triton interpreter bf16 dot operands are upcast to float32 (its bf16 dot is broken).

Design reasoning (why one atomic backward kernel, why m and log s, gradient filtering, precision):
docs/kernels.md, "The triton backend".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable
from triton.runtime.errors import OutOfResources

from .precision import accumulation_dtype, autocast_off_in_backward

# --------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------


@triton.jit
def _logit_tile(
    h_ptr, w_ptr,  # hidden [N, d], weight [V, d]
    rows, cols,  # [BLOCK_N] row ids, [BLOCK_V] vocab ids (int64, may run past N / V)
    row_mask, col_mask,  # [BLOCK_N], [BLOCK_V]: which of them exist
    D,  # hidden size d
    stride_hn, stride_hd, stride_wv, stride_wd,  # element strides of hidden and weight
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr,  # accumulator dtype: tl.float32, or tl.float64 for float64 inputs
    PREC: tl.constexpr,  # tl.dot input_precision ("ieee" or "tf32"; only matters for float32)
    UPCAST: tl.constexpr,  # upcast dot operands to float32 (interpreter + bf16 only)
):
    """Logits z[rows, cols] = hidden[rows] @ weight[cols].T, looping over d in BLOCK_D chunks."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=ACC)  # [BLOCK_N, BLOCK_V]
    for k in range(0, tl.cdiv(D, BLOCK_D)):
        offs_d = k * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        d_mask = offs_d < D
        # Masked loads pad rows, columns and d with zeros, so tl.dot always sees full >= 16 blocks
        # and the padding adds nothing to the sums (d = 1 works; padded logits are masked later).
        h = tl.load(
            h_ptr + rows[:, None] * stride_hn + offs_d[None, :] * stride_hd,
            mask=row_mask[:, None] & d_mask[None, :], other=0.0,
        )  # [BLOCK_N, BLOCK_D]
        wt = tl.load(
            w_ptr + offs_d[:, None] * stride_wd + cols[None, :] * stride_wv,
            mask=d_mask[:, None] & col_mask[None, :], other=0.0,
        )  # [BLOCK_D, BLOCK_V] (weight tile, transposed by addressing)
        if UPCAST:  # interpreter-only workaround for its broken bf16 dot (docs/kernels.md)
            h = h.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(h, wt, acc=acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _fwd_kernel(
    h_ptr,  # hidden [N, d]
    w_ptr,  # weight [V, d]
    tgt_ptr,  # targets [N] int64, all in [0, V)
    max_part_ptr,  # out: [splits, N] row max of the logits in each vocabulary split (ACC dtype)
    sum_part_ptr,  # out: [splits, N] sum of exp(logit - that max) over the split (ACC dtype)
    tgt_part_ptr,  # out: [splits, N] target logit if it lies in this split, else 0 (ACC dtype)
    N, V, D,  # rows, vocabulary, hidden size
    stride_hn, stride_hd, stride_wv, stride_wd,  # element strides of hidden and weight
    TILES_PER_SPLIT,  # vocab tiles handled by one program along grid axis 1
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,  # as in _logit_tile
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    # Ids go int64 before meeting the strides: V * d exceeds 2**31 for large heads.
    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # [BLOCK_N]
    row_mask = rows < N
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)  # [BLOCK_N]

    m = tl.full([BLOCK_N], float("-inf"), dtype=ACC)  # running max
    s = tl.zeros([BLOCK_N], dtype=ACC)  # running sum of exp(z - m)
    t = tl.zeros([BLOCK_N], dtype=ACC)  # target logit (stays 0 unless it lies in this split)
    n_tiles = tl.cdiv(V, BLOCK_V)
    tile_lo = pid_s * TILES_PER_SPLIT
    tile_hi = tl.minimum(tile_lo + TILES_PER_SPLIT, n_tiles)
    for j in range(tile_lo, tile_hi):
        cols = (j * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)  # [BLOCK_V]
        col_mask = cols < V
        z = _logit_tile(
            h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, stride_hn, stride_hd, stride_wv, stride_wd,
            BLOCK_N, BLOCK_V, BLOCK_D, ACC, PREC, UPCAST,
        )  # [BLOCK_N, BLOCK_V]
        z = tl.where(col_mask[None, :], z, float("-inf"))
        # Every tile has >= 1 real column, so m_new is finite and exp(m - m_new) never sees inf - inf.
        m_new = tl.maximum(m, tl.max(z, axis=1))  # [BLOCK_N]
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
        m = m_new
        t += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), axis=1)
    tl.store(max_part_ptr + pid_s * N + rows, m, mask=row_mask)
    tl.store(sum_part_ptr + pid_s * N + rows, s, mask=row_mask)
    tl.store(tgt_part_ptr + pid_s * N + rows, t, mask=row_mask)


@triton.jit
def _bwd_kernel(
    h_ptr,  # hidden [N, d]
    w_ptr,  # weight [V, d]
    tgt_ptr,  # targets [N] int64
    max_ptr,  # [N] row max of the logits, saved by the forward (ACC dtype)
    logsum_ptr,  # [N] log sum_v exp(logit - max), saved by the forward (ACC dtype)
    g_ptr,  # [N] upstream gradient of the log-probs (ACC dtype)
    gh_ptr,  # out: grad_hidden accumulator [N, d], contiguous, ACC dtype, zero-initialised
    gw_ptr,  # out: grad_weight accumulator [V, d], contiguous, ACC dtype, zero-initialised
    N, V, D,  # rows, vocabulary, hidden size
    stride_hn, stride_hd, stride_wv, stride_wd,  # element strides of hidden and weight
    BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
    GROUP_N: tl.constexpr,  # row blocks per program group (L2 reuse of W tiles, docs/kernels.md)
    ACC: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,  # as in _logit_tile
    COMPUTE_GH: tl.constexpr,  # hidden needs a gradient
    COMPUTE_GW: tl.constexpr,  # weight needs a gradient
):
    # Grouped program order: consecutive programs take GROUP_N row blocks against one vocab tile,
    # so the programs running at a time read few distinct h / W tiles and update few output blocks.
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(N, BLOCK_N)
    n_tiles = tl.cdiv(V, BLOCK_V)
    progs_per_group = GROUP_N * n_tiles
    first_n = (pid // progs_per_group) * GROUP_N
    group_rows = tl.minimum(n_row_blocks - first_n, GROUP_N)
    pid_n = first_n + (pid % progs_per_group) % group_rows
    pid_v = (pid % progs_per_group) // group_rows

    rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)  # [BLOCK_N]
    cols = (pid_v * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)  # [BLOCK_V]
    row_mask = rows < N
    col_mask = cols < V
    tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)  # [BLOCK_N]
    m = tl.load(max_ptr + rows, mask=row_mask, other=0.0)  # [BLOCK_N]
    log_s = tl.load(logsum_ptr + rows, mask=row_mask, other=0.0)  # [BLOCK_N]
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0)  # [BLOCK_N]

    z = _logit_tile(
        h_ptr, w_ptr, rows, cols, row_mask, col_mask, D, stride_hn, stride_hd, stride_wv, stride_wd,
        BLOCK_N, BLOCK_V, BLOCK_D, ACC, PREC, UPCAST,
    )  # [BLOCK_N, BLOCK_V]
    # Padded columns get softmax exactly 0: their logit would read 0, and exp(0 - m) overflows to inf
    # when every real logit is far below 0, and inf * 0 (padded W) is NaN in the gradient dots.
    # Padded rows need nothing: their g is 0.
    z = tl.where(col_mask[None, :], z, float("-inf"))
    p = tl.exp((z - m[:, None]) - log_s[:, None])  # softmax, [BLOCK_N, BLOCK_V]
    onehot = cols[None, :] == tgt[:, None]
    dz = g[:, None] * (tl.where(onehot, 1.0, 0.0) - p)  # [BLOCK_N, BLOCK_V]
    # The gradient dots run in the input dtype (bf16 tensor cores for bf16 inputs), like eager autograd.
    dz = dz.to(h_ptr.dtype.element_ty)  # [BLOCK_N, BLOCK_V]
    if UPCAST:  # interpreter only (docs/kernels.md); exact, since dz is now bf16-valued
        dz = dz.to(tl.float32)

    for k in range(0, tl.cdiv(D, BLOCK_D)):
        offs_d = k * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        d_mask = offs_d < D
        if COMPUTE_GH:
            w = tl.load(
                w_ptr + cols[:, None] * stride_wv + offs_d[None, :] * stride_wd,
                mask=col_mask[:, None] & d_mask[None, :], other=0.0,
            )  # [BLOCK_V, BLOCK_D]
            if UPCAST:
                w = w.to(tl.float32)
            gh = tl.dot(dz, w, input_precision=PREC, out_dtype=ACC)  # [BLOCK_N, BLOCK_D]
            tl.atomic_add(
                gh_ptr + rows[:, None] * D + offs_d[None, :], gh,
                mask=row_mask[:, None] & d_mask[None, :], sem="relaxed",
            )
        if COMPUTE_GW:
            h = tl.load(
                h_ptr + rows[:, None] * stride_hn + offs_d[None, :] * stride_hd,
                mask=row_mask[:, None] & d_mask[None, :], other=0.0,
            )  # [BLOCK_N, BLOCK_D]
            if UPCAST:
                h = h.to(tl.float32)
            gw = tl.dot(tl.trans(dz), h, input_precision=PREC, out_dtype=ACC)  # [BLOCK_V, BLOCK_D]
            tl.atomic_add(
                gw_ptr + cols[:, None] * D + offs_d[None, :], gw,
                mask=col_mask[:, None] & d_mask[None, :], sem="relaxed",
            )


# --------------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Tiles:
    """One launch configuration (tile sizes and Triton compile options)."""

    block_n: int
    block_v: int
    block_d: int
    num_warps: int = 4
    num_stages: int = 2


def _interpreting(device: torch.device) -> bool:
    return device.type != "cuda"


def _pow2_clamp(n: int, lo: int, hi: int) -> int:
    # tl.dot needs every block dim >= 16; tiles never need to exceed the (padded) problem.
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _candidate_tiles(kind: str, n_rows: int, vocab: int, dim: int, dtype: torch.dtype, device) -> list[_Tiles]:
    """Tile configs to try, largest first (a smaller GPU may reject the first for shared memory).

    Fixed heuristics, not yet tuned on real GPUs (why not triton.autotune: docs/kernels.md).
    """
    if _interpreting(device):
        # The interpreter runs each program in Python: small fixed tiles keep tests fast while still
        # giving several row blocks, vocab tiles and d chunks on test-sized problems.
        return [_Tiles(16, _pow2_clamp(vocab, 16, 64), 16)]
    if dtype == torch.float64:
        base = [_Tiles(32, 32, 16, num_warps=4, num_stages=2)]
    elif dtype == torch.float32:
        base = [_Tiles(64, 64, 32, num_warps=4, num_stages=3), _Tiles(32, 32, 32, num_warps=4, num_stages=2)]
    elif kind == "fwd":  # bf16 / fp16: a matmul with an online-softmax epilogue per vocab tile
        base = [
            _Tiles(128, 128, 64, num_warps=8, num_stages=3),
            _Tiles(64, 128, 64, num_warps=4, num_stages=2),
            _Tiles(64, 64, 32, num_warps=4, num_stages=2),
        ]
    else:  # bf16 / fp16 backward: dz tile + two gradient tiles live at once, so fewer stages
        base = [
            _Tiles(128, 128, 64, num_warps=8, num_stages=2),
            _Tiles(128, 128, 32, num_warps=8, num_stages=1),
            _Tiles(64, 64, 32, num_warps=4, num_stages=1),
        ]
    # Short problems: do not pad one row (or a tiny vocabulary / d) up to a 128-wide tile.
    return [
        _Tiles(
            min(t.block_n, _pow2_clamp(n_rows, 16, t.block_n)),
            min(t.block_v, _pow2_clamp(vocab, 16, t.block_v)),
            min(t.block_d, _pow2_clamp(dim, 16, t.block_d)),
            t.num_warps,
            t.num_stages,
        )
        for t in base
    ]


# First config that compiled, per (kernel kind, dtype, device index): avoids retrying failures.
_WORKING_CONFIG: dict = {}


def _launch(kind: str, launch_fn, n_rows: int, vocab: int, dim: int, dtype: torch.dtype, device: torch.device):
    """Run launch_fn(tiles) with the first candidate config that fits the device's resources.

    An OutOfResources error is raised while loading the compiled kernel, before anything runs, so
    retrying with smaller tiles cannot double-count into the atomically accumulated gradients.
    """
    candidates = _candidate_tiles(kind, n_rows, vocab, dim, dtype, device)
    key = (kind, dtype, device.index)
    start = _WORKING_CONFIG.get(key, 0)
    for i in range(min(start, len(candidates) - 1), len(candidates)):
        try:
            out = launch_fn(candidates[i])
        except OutOfResources:
            if i == len(candidates) - 1:
                raise
            continue
        _WORKING_CONFIG[key] = i
        return out
    raise AssertionError("unreachable")


def _kernel_flags(dtype: torch.dtype, device: torch.device) -> dict:
    acc = tl.float64 if accumulation_dtype(dtype) == torch.float64 else tl.float32
    tf32 = dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32
    return dict(ACC=acc, PREC="tf32" if tf32 else "ieee", UPCAST=_interpreting(device) and dtype == torch.bfloat16)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: small, so that tests exercise the vocabulary split


def _forward(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns logprob, row max m and log s (sum-exp below m), each [N] float32 (float64 for float64)."""
    n_rows, dim = hidden.shape
    vocab = weight.shape[0]
    acc_dtype = accumulation_dtype(hidden.dtype)
    flags = _kernel_flags(hidden.dtype, hidden.device)

    def launch(tiles: _Tiles):
        n_row_blocks = triton.cdiv(n_rows, tiles.block_n)
        n_tiles = triton.cdiv(vocab, tiles.block_v)
        # Split the vocabulary only as much as needed for ~2 programs per SM; every split gets >= 1 tile.
        splits = max(1, min(n_tiles, triton.cdiv(2 * _sm_count(hidden.device), n_row_blocks)))
        tiles_per_split = triton.cdiv(n_tiles, splits)
        splits = triton.cdiv(n_tiles, tiles_per_split)
        # [3, splits, N]: row max, sum-exp below it, target logit
        parts = torch.empty((3, splits, n_rows), dtype=acc_dtype, device=hidden.device)
        _fwd_kernel[(n_row_blocks, splits)](
            hidden, weight, targets, parts[0], parts[1], parts[2],
            n_rows, vocab, dim,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            tiles_per_split,
            BLOCK_N=tiles.block_n, BLOCK_V=tiles.block_v, BLOCK_D=tiles.block_d,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages, **flags,
        )
        return parts

    max_part, sum_part, tgt_part = _launch("fwd", launch, n_rows, vocab, dim, hidden.dtype, hidden.device)
    if max_part.shape[0] == 1:
        row_max, sum_exp = max_part[0], sum_part[0]  # [N], [N]
    else:  # merge the splits' online-softmax states
        row_max = max_part.amax(dim=0)  # [N]
        sum_exp = (sum_part * torch.exp(max_part - row_max)).sum(dim=0)  # [N]
    log_sum = torch.log(sum_exp)  # [N]
    tgt_logit = tgt_part.sum(dim=0)  # [N]: exactly one split holds each target, the others add 0
    return (tgt_logit - row_max) - log_sum, row_max, log_sum


def _backward(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_max: torch.Tensor,
    log_sum: torch.Tensor, grad_out: torch.Tensor, need_gh: bool, need_gw: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_hidden [N, d] and grad_weight [V, d] in the input dtype (None where not needed)."""
    n_rows, dim = hidden.shape
    vocab = weight.shape[0]
    acc_dtype = row_max.dtype
    flags = _kernel_flags(hidden.dtype, hidden.device)
    g = grad_out.to(acc_dtype).contiguous()  # [N]
    # Accumulate in float32 (float64) whatever the input dtype; a 1-element dummy stands in for an
    # output that is not needed (the kernel never touches it: COMPUTE_* is a constexpr).
    gh = torch.zeros((n_rows, dim) if need_gh else (1,), dtype=acc_dtype, device=hidden.device)  # [N, d]
    gw = torch.zeros((vocab, dim) if need_gw else (1,), dtype=acc_dtype, device=hidden.device)  # [V, d]

    def launch(tiles: _Tiles):
        grid = (triton.cdiv(n_rows, tiles.block_n) * triton.cdiv(vocab, tiles.block_v),)
        _bwd_kernel[grid](
            hidden, weight, targets, row_max, log_sum, g, gh, gw,
            n_rows, vocab, dim,
            hidden.stride(0), hidden.stride(1), weight.stride(0), weight.stride(1),
            BLOCK_N=tiles.block_n, BLOCK_V=tiles.block_v, BLOCK_D=tiles.block_d, GROUP_N=8,
            COMPUTE_GH=need_gh, COMPUTE_GW=need_gw,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages, **flags,
        )

    _launch("bwd", launch, n_rows, vocab, dim, hidden.dtype, hidden.device)
    grad_hidden = gh.to(hidden.dtype) if need_gh else None
    grad_weight = gw.to(weight.dtype) if need_gw else None
    return grad_hidden, grad_weight


# --------------------------------------------------------------------------------------------------
# Autograd Function
# --------------------------------------------------------------------------------------------------


class _TritonLinearLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logprob, row_max, log_sum = _forward(hidden, weight, targets)  # [N] each
        ctx.save_for_backward(hidden, weight, targets, row_max, log_sum)
        return logprob

    @staticmethod
    @once_differentiable
    @autocast_off_in_backward
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets, row_max, log_sum = ctx.saved_tensors
        need_gh, need_gw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden, grad_weight = _backward(hidden, weight, targets, row_max, log_sum, grad_out, need_gh, need_gw)
        return grad_hidden, grad_weight, None


# --------------------------------------------------------------------------------------------------
# Public function
# --------------------------------------------------------------------------------------------------


def triton_linear_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, options=None
) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T)[r, targets[r]]`` for every row r, fused; never builds [N, V].

    Called by :func:`lit_idpo.kernels.linear_logprobs` (``backend="triton"``), which has already
    validated the inputs, flattened them to ``hidden [N, d]`` / ``targets [N]``, dropped
    ``ignore_index`` rows and given ``hidden`` and ``weight`` one dtype. ``options`` (a
    ``LinearLogprobsOptions``) is accepted for a uniform backend signature; no field of it is used.

    Returns:
        ``[N]`` float32 log-probs (float64 for float64 inputs), differentiable w.r.t. ``hidden`` and
        ``weight`` (either may be frozen; its gradient work is then skipped).
    """
    if hidden.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "triton_linear_logprobs: CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before "
            "triton is imported); use backend='torch' on CPU otherwise."
        )
    if hidden.dtype != weight.dtype:
        raise ValueError(
            f"triton_linear_logprobs: hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype; "
            "call lit_idpo.kernels.linear_logprobs, which promotes them."
        )
    targets = targets.long().contiguous()  # [N]
    if hidden.device.type == "cuda":
        # Triton launches on the current device; make it the tensors' device.
        with torch.cuda.device(hidden.device):
            return _TritonLinearLogprobs.apply(hidden, weight, targets)
    return _TritonLinearLogprobs.apply(hidden, weight, targets)
