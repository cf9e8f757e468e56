"""The ``torch`` backend of :func:`linear_logprobs`: chunked PyTorch, the CPU path.

Rows go through in chunks; each chunk's ``[chunk, V]`` logits live in one reused tile, reduced in
place (max, exp, sum) to the log-probs. Three modes, chosen from what needs a gradient: no grad
(plain chunked forward), frozen weight (the forward also forms ``dlogp/dh = -(p - onehot) @ W`` and
backward only scales it), weight trained (the forward saves lse; backward recomputes each chunk's
logits). ``p - onehot`` is formed in full precision before any low-precision matmul.

bf16/fp16 inputs (what the op hands down under bf16 autocast): every matmul runs in the input dtype,
which CPU (oneDNN: AVX512-BF16, AMX) and CUDA kernels accumulate in fp32, as eager's matmuls do; max,
exp, sum, the logsumexp and the target gathers run in fp32 on the tile. The gradients' ``[c, V]``
operand is ``g * (p - onehot)`` rounded to the input dtype once, as eager autograd's bf16 dlogits.

Math, costs (2-8 NVd FLOPs by mode), memory, precision and the chunk-size rule: docs/kernels.md,
"The torch backend"; measured numbers: benchmarks/RESULTS.md.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from .precision import accumulation_dtype, autocast_off_in_backward

# Default tile budget: rows per chunk = this many bytes / (V * bytes per accumulation element), in
# whole multiples of 64 rows, clamped to [_MIN_CHUNK_ROWS, _MAX_CHUNK_ROWS]. See default_chunk_rows.
_TILE_BYTES = 96 * 2**20
_MIN_CHUNK_ROWS = 128
_MAX_CHUNK_ROWS = 1024


def default_chunk_rows(n_rows: int, vocab: int, acc_dtype: torch.dtype = torch.float32) -> int:
    """Rows per chunk when ``options.chunk_rows`` is None: a ~96 MiB ``[chunk, V]`` accumulation tile.

    Whole multiples of 64 rows in [128, 1024]: 512 rows at V=49152 in fp32 (SmolLM2's head), 192 at
    V=128256 (Llama-3's), 768 at V=32000. Sized by bytes because memory is what a larger vocabulary
    costs; the floor is where matmul efficiency visibly drops. Measurements: the chunk-size table in
    benchmarks/RESULTS.md; reasoning: docs/kernels.md.
    """
    itemsize = torch.empty((), dtype=acc_dtype).element_size()
    rows = _TILE_BYTES // max(1, vocab * itemsize)
    rows = max(_MIN_CHUNK_ROWS, min(_MAX_CHUNK_ROWS, rows))
    rows = max(_MIN_CHUNK_ROWS, rows // 64 * 64)  # whole multiples of 64: friendlier matmul blocking
    return max(1, min(rows, n_rows))


class _Tiles:
    """The one reusable ``[chunk, V]`` working tile (plus a low-precision twin for bf16/fp16 inputs).

    Reusing one buffer through ``out=`` matters on a CPU: a fresh 100 MB allocation per chunk is
    returned to the OS and page-faulted in again every time.
    """

    def __init__(self, rows: int, vocab: int, in_dtype: torch.dtype, acc_dtype: torch.dtype, device):
        self.acc = torch.empty(rows, vocab, dtype=acc_dtype, device=device)  # [chunk, V]
        # Low precision: matmuls run in the input dtype (fp32 accumulation inside), so their [chunk, V]
        # operand/result needs an input-dtype twin of the tile.
        self.low = None if in_dtype == acc_dtype else torch.empty(rows, vocab, dtype=in_dtype, device=device)

    def logits(self, h_c: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``h_c @ weight.T`` into the accumulation tile; returns the ``[c, V]`` view."""
        c = h_c.shape[0]
        tile = self.acc[:c]  # [c, V], contiguous (leading rows of a contiguous buffer)
        if self.low is None:
            return torch.mm(h_c, weight.t(), out=tile)
        return tile.copy_(torch.mm(h_c, weight.t(), out=self.low[:c]))

    def times_weight(self, tile: torch.Tensor, weight: torch.Tensor, out=None):
        """``tile @ weight`` -> ``[c, d]``. Low precision: the tile is rounded to the input dtype once."""
        if self.low is None:
            return torch.mm(tile, weight, out=out)
        return torch.mm(self.rounded(tile), weight, out=out)

    def rounded(self, tile: torch.Tensor) -> torch.Tensor:
        """The ``[c, V]`` accumulation tile rounded into the low-precision twin (its view is returned).

        A plain dtype copy: on a CPU a mixed-dtype elementwise op with a bf16 output (``torch.mul(tile, g,
        out=low)``) measured ~1.5x slower than the in-place fp32 op followed by this copy.
        """
        return self.low[: tile.shape[0]].copy_(tile)


def _chunked_forward(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int, want_grad_hidden: bool
) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Returns ``(logprobs [N], lse [N], dlogp_dh [N, d] or None)``, all in the accumulation dtype."""
    n, d = hidden.shape
    vocab = weight.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    tiles = _Tiles(min(chunk_rows, n), vocab, hidden.dtype, acc, hidden.device)
    out = torch.empty(n, dtype=acc, device=hidden.device)  # [N]
    lse = torch.empty(n, dtype=acc, device=hidden.device)  # [N]
    dlogp_dh = torch.empty(n, d, dtype=acc, device=hidden.device) if want_grad_hidden else None  # [N, d]
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        idx = targets[start:stop].unsqueeze(1)  # [c, 1]
        tile = tiles.logits(hidden[start:stop], weight)  # [c, V] logits
        m = tile.amax(dim=1, keepdim=True)  # [c, 1]
        tile.sub_(m)  # z - m <= 0: exp cannot overflow
        z_t = tile.gather(1, idx)  # [c, 1] target logit - m, read before exp for full precision
        tile.exp_()
        sum_exp = tile.sum(dim=1, keepdim=True)  # [c, 1], >= 1 (the max entry contributes exp(0))
        log_sum = sum_exp.log()  # [c, 1]
        out[start:stop] = (z_t - log_sum).squeeze(1)
        lse[start:stop] = (m + log_sum).squeeze(1)
        if dlogp_dh is not None:
            tile.div_(sum_exp)  # p
            tile.scatter_add_(1, idx, torch.full_like(z_t, -1.0))  # p - onehot, in full precision
            # [c, d] = (onehot - p) @ W. For bf16/fp16 this is the input-dtype matmul result: scaling it
            # by g in backward rounds a second time (error up to ~2x eager's on this gradient).
            dlogp_dh[start:stop] = tiles.times_weight(tile, weight).neg_()
    return out, lse, dlogp_dh


class _LinearLogprobsFunction(torch.autograd.Function):
    """Chunked ``log_softmax(hidden @ weight.T)[targets]`` with one of two backward strategies."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):  # hidden [N, d], weight [V, d], targets [N]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        precompute = need_h and not need_w  # frozen head: dlogp/dh is available from this very pass
        out, lse, dlogp_dh = _chunked_forward(hidden, weight, targets, chunk_rows, want_grad_hidden=precompute)
        ctx.precompute = precompute
        ctx.chunk_rows = chunk_rows
        ctx.hidden_dtype = hidden.dtype
        if precompute:
            ctx.save_for_backward(dlogp_dh)
        else:
            ctx.save_for_backward(hidden, weight, targets, lse)
        return out

    @staticmethod
    @once_differentiable
    @autocast_off_in_backward
    def backward(ctx, grad_out):  # grad_out [N]
        if ctx.precompute:
            (dlogp_dh,) = ctx.saved_tensors
            g = grad_out.to(dlogp_dh.dtype).unsqueeze(1)  # [N, 1]
            # The stored factor is in the accumulation dtype; round to hidden's dtype once, here.
            return (dlogp_dh * g).to(ctx.hidden_dtype), None, None, None
        hidden, weight, targets, lse = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        n, d = hidden.shape
        vocab = weight.shape[0]
        acc = lse.dtype
        chunk_rows = ctx.chunk_rows
        neg_g = grad_out.to(acc).neg().unsqueeze(1)  # [N, 1]; dL/dz = g * (onehot - p) = -g * (p - onehot)
        tiles = _Tiles(min(chunk_rows, n), vocab, hidden.dtype, acc, hidden.device)
        low = tiles.low is not None
        grad_h = torch.empty(n, d, dtype=hidden.dtype, device=hidden.device) if need_h else None  # [N, d]
        grad_w = _WeightGrad(vocab, d, weight, one_chunk=n <= chunk_rows) if need_w else None  # [V, d]
        minus_one = torch.full((min(chunk_rows, n), 1), -1.0, dtype=acc, device=hidden.device)
        for start in range(0, n, chunk_rows):
            stop = min(start + chunk_rows, n)
            h_c = hidden[start:stop]  # [c, d]
            idx = targets[start:stop].unsqueeze(1)  # [c, 1]
            tile = tiles.logits(h_c, weight)  # [c, V]
            tile.sub_(lse[start:stop].unsqueeze(1)).exp_()  # p, from the forward's lse: no max/sum pass
            tile.scatter_add_(1, idx, minus_one[: stop - start])  # p - onehot
            g_c = neg_g[start:stop]  # [c, 1]
            if low:
                # dz = -g * (p - onehot), formed in full precision and rounded to the input dtype once: eager
                # autograd's bf16 dlogits. Both gradient matmuls then run in the input dtype (fp32 accumulation
                # inside), as eager's do. The fp32 weight-gradient matmul this replaces cost 3x the bf16 one
                # (one thread, this CPU with AMX) and kept the whole path near fp32 speed.
                dz = tiles.rounded(tile.mul_(g_c))  # [c, V] in the input dtype
                if grad_h is not None:
                    torch.mm(dz, weight, out=grad_h[start:stop])  # [c, d]
                if grad_w is not None:
                    grad_w.add(dz.t(), h_c)  # [V, c] @ [c, d]
                continue
            # Full precision: g scales the small [c, d] operands, never the [c, V] tile.
            if grad_h is not None:
                torch.mm(tile, weight, out=grad_h[start:stop]).mul_(g_c)  # [c, d]
            if grad_w is not None:
                grad_w.add(tile.t(), h_c * g_c)  # [V, c] @ [c, d]
        return grad_h, None if grad_w is None else grad_w.result(), None, None


class _WeightGrad:
    """The ``[V, d]`` weight gradient, summed over row chunks.

    Full precision: one ``addmm_`` per chunk into the gradient itself. Low precision: each chunk's product
    comes from an input-dtype matmul (fp32 accumulation inside, one rounding of the chunk's sum, as eager's
    single matmul rounds once); with one chunk that product IS the gradient, with several the products are
    summed in an fp32 buffer and rounded once at the end (error up to ~one extra rounding per chunk on
    entries whose chunk sums cancel; the tests hold it to eager + tolerance).
    """

    def __init__(self, vocab: int, d: int, weight: torch.Tensor, one_chunk: bool):
        self.dtype = weight.dtype
        self.low = accumulation_dtype(weight.dtype) != weight.dtype
        self.one_chunk = one_chunk
        self.total = None
        if not self.low:
            self.total = torch.zeros(vocab, d, dtype=weight.dtype, device=weight.device)
        elif not one_chunk:
            self.total = torch.zeros(vocab, d, dtype=accumulation_dtype(weight.dtype), device=weight.device)
            self.part = torch.empty(vocab, d, dtype=weight.dtype, device=weight.device)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add ``a @ b`` (``[V, c] @ [c, d]``)."""
        if not self.low:
            self.total.addmm_(a, b)
        elif self.one_chunk:
            self.total = torch.mm(a, b)
        else:
            self.total.add_(torch.mm(a, b, out=self.part))

    def result(self) -> torch.Tensor:
        return self.total.to(self.dtype)


def torch_linear_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, options) -> torch.Tensor:
    """Chunked log-probs ``[N]`` of ``targets`` under ``log_softmax(hidden @ weight.T)``.

    Called by :func:`linear_logprobs` after validation: ``hidden [N, d]`` and ``weight [V, d]`` share a
    floating dtype and device, ``targets [N]`` int64 all lie in ``[0, V)``, ``N >= 1``. ``options`` is
    a :class:`LinearLogprobsOptions`; only ``chunk_rows`` is read here.

    Returns float32 (float64 for float64 inputs), differentiable with respect to both tensors.
    """
    n = hidden.shape[0]
    acc = accumulation_dtype(hidden.dtype)
    chunk_rows = options.chunk_rows
    if chunk_rows is None:  # (a given value was checked by LinearLogprobsOptions)
        chunk_rows = default_chunk_rows(n, weight.shape[0], acc)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearLogprobsFunction.apply(hidden, weight, targets, chunk_rows)
    with torch.no_grad():
        return _chunked_forward(hidden, weight, targets, chunk_rows, want_grad_hidden=False)[0]
