"""Tests of the fused Triton kernels (kernels/triton_fused.py).

On a CPU machine they run in the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
shapes stay tiny; tests marked ``cuda`` run real kernels at realistic sizes and are skipped without
a GPU. Every check is against an independent computation: log_softmax of explicit float64 logits
(the "truth"), or eager PyTorch in the same dtype (the Cut Cross-Entropy rule: the fused result
must be no worse than eager plus a small tolerance).

The interpreter's bf16 tl.dot is broken, so on CPU the kernels upcast bf16 dot operands to float32
(exact for bf16 products); the CPU bf16 tests therefore check the bf16 data path and accumulation,
and the ``cuda`` tests check real bf16 tensor-core dots.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_no_worse_than_eager, head_inputs, head_truth
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs
from lit_idpo.kernels.triton_fused import triton_linear_logprobs


def _rows(shape):
    """(n, d, v) -> the head_inputs arguments ((n,), d, v)."""
    n, d, v = shape
    return (n,), d, v

OPTS = LinearLogprobsOptions(backend="triton")
NAIVE = LinearLogprobsOptions(backend="naive")
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _run(fn, hidden, weight, targets, upstream, need_h=True, need_w=True):
    """Value and gradients from fn(hidden, weight, targets); a frozen input gets None."""
    h = hidden.detach().clone().requires_grad_(need_h)
    w = weight.detach().clone().requires_grad_(need_w)
    value = fn(h, w, targets)
    value.backward(upstream.to(value.dtype))
    return value.detach(), h.grad, w.grad


def _public(h, w, t):
    return linear_logprobs(h, w, t, options=OPTS)


def _direct(h, w, t):
    return triton_linear_logprobs(h, w, t, OPTS)


# --------------------------------------------------------------------------------------------------
# float64: values and gradients against the float64 truth
# --------------------------------------------------------------------------------------------------

# (N, d, V): interpreter tiles are 16 rows x 64 vocab x 16 features, so these cover one row, one
# feature, one token, d and V off the tile grid, several row blocks / vocab tiles / vocab splits.
SHAPES = [
    (1, 5, 37),  # one row
    (7, 1, 50),  # one feature (d padded to 16 by masked loads)
    (5, 20, 1),  # one token: logprob is exactly 0
    (5, 24, 300),  # one row block, vocabulary split over programs; V = 4 tiles + 44
    (17, 33, 65),  # 2 row blocks, V = one tile + 1, d = 2 chunks + 1
    (40, 40, 300),  # 3 row blocks, 5 vocab tiles, d off the chunk grid
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}-d{}-V{}".format(*s))
def test_float64_matches_truth_direct(shape):
    hidden, weight, targets, upstream = head_inputs(*_rows(shape))
    value, grad_h, grad_w = _run(_direct, hidden, weight, targets, upstream)
    ref, ref_h, ref_w = head_truth(hidden, weight, targets, upstream)
    assert value.dtype == torch.float64 and value.shape == (shape[0],)
    assert grad_h.dtype == grad_w.dtype == torch.float64
    torch.testing.assert_close(value, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_h, ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_w, ref_w, rtol=0, atol=1e-12)


@pytest.mark.parametrize("frozen", ["none", "hidden", "weight"])
def test_float64_public_entry_and_frozen_inputs(frozen):
    hidden, weight, targets, upstream = head_inputs((13,), 24, 150, seed=1)
    value, grad_h, grad_w = _run(
        _public, hidden, weight, targets, upstream, need_h=frozen != "hidden", need_w=frozen != "weight"
    )
    ref, ref_h, ref_w = head_truth(hidden, weight, targets, upstream)
    torch.testing.assert_close(value, ref, rtol=0, atol=1e-12)
    if frozen == "hidden":
        assert grad_h is None
    else:
        torch.testing.assert_close(grad_h, ref_h, rtol=0, atol=1e-12)
    if frozen == "weight":
        assert grad_w is None
    else:
        torch.testing.assert_close(grad_w, ref_w, rtol=0, atol=1e-12)


def test_non_contiguous_inputs():
    hidden, weight, targets, upstream = head_inputs((9,), 20, 70, seed=2)
    # Same values, other memory layouts: weight stored as [d, V] and viewed transposed; hidden a
    # strided slice of a wider tensor.
    weight_t = weight.t().contiguous().t()  # [V, d] with strides (1, V)
    wide = torch.zeros(9, 40, dtype=hidden.dtype)
    wide[:, ::2] = hidden
    hidden_s = wide[:, ::2]  # [N, d] with strides (40, 2)
    assert not weight_t.is_contiguous() and not hidden_s.is_contiguous()
    value, grad_h, grad_w = _run(_direct, hidden_s, weight_t, targets, upstream)
    ref, ref_h, ref_w = head_truth(hidden, weight, targets, upstream)
    torch.testing.assert_close(value, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_h, ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_w, ref_w, rtol=0, atol=1e-12)


def test_large_logits_stay_finite_and_exact():
    # Logits in the hundreds: exp overflows float32 without the running max.
    hidden, weight, targets, upstream = head_inputs((6,), 16, 130, dtype=torch.float32, scale=12.0, seed=3)
    value, grad_h, grad_w = _run(_direct, hidden, weight, targets, upstream)
    ref, ref_h, ref_w = head_truth(hidden, weight, targets, upstream)
    assert (hidden.double() @ weight.double().t()).abs().max() > 200
    assert torch.isfinite(value).all() and torch.isfinite(grad_h).all() and torch.isfinite(grad_w).all()
    assert (value <= 0).all()
    scale = ref.abs().max().item()
    torch.testing.assert_close(value.double(), ref, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(grad_h.double(), ref_h, rtol=0, atol=1e-5 * ref_h.abs().max().item())
    torch.testing.assert_close(grad_w.double(), ref_w, rtol=0, atol=1e-5 * ref_w.abs().max().item())


def test_all_logits_far_below_zero():
    # Every logit near -300: exp(-max) overflows float32, which must not leak out of the padded
    # vocabulary columns of the last tile (V = 70 is not a multiple of the tile) as inf * 0 = NaN.
    n, d, v = 6, 16, 70
    gen = torch.Generator().manual_seed(8)
    hidden = torch.full((n, d), 4.0) + 0.1 * torch.randn(n, d, generator=gen)
    weight = torch.full((v, d), -4.7) + 0.1 * torch.randn(v, d, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen)
    upstream = torch.randn(n, generator=gen, dtype=torch.float64)
    assert (hidden.double() @ weight.double().t()).max() < -250
    value, grad_h, grad_w = _run(_direct, hidden, weight, targets, upstream)
    ref, ref_h, ref_w = head_truth(hidden, weight, targets, upstream)
    assert torch.isfinite(value).all() and torch.isfinite(grad_h).all() and torch.isfinite(grad_w).all()
    torch.testing.assert_close(value.double(), ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(grad_h.double(), ref_h, rtol=0, atol=1e-4)
    torch.testing.assert_close(grad_w.double(), ref_w, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# gradcheck (float64)
# --------------------------------------------------------------------------------------------------


def test_gradcheck_full_tiny():
    hidden, weight, targets, _ = head_inputs((2,), 3, 20, seed=4)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: triton_linear_logprobs(a, b, targets, OPTS), (h, w))


@pytest.mark.parametrize("frozen", ["none", "hidden", "weight"])
def test_gradcheck_fast_mode(frozen):
    # Two vocab tiles, split over two programs in the forward.
    hidden, weight, targets, _ = head_inputs((5,), 18, 70, seed=5)
    h = hidden.requires_grad_(frozen != "hidden")
    w = weight.requires_grad_(frozen != "weight")
    assert torch.autograd.gradcheck(
        lambda a, b: triton_linear_logprobs(a, b, targets, OPTS), (h, w), fast_mode=True
    )


# --------------------------------------------------------------------------------------------------
# Low precision: no worse than eager PyTorch in the same dtype (against the float64 truth)
# --------------------------------------------------------------------------------------------------


def _no_worse_than_eager(hidden, weight, targets, upstream, fused_fn):
    truth = head_truth(hidden, weight, targets, upstream)
    fused = _run(fused_fn, hidden, weight, targets, upstream)
    eager = _run(lambda h, w, t: linear_logprobs(h, w, t, options=NAIVE), hidden, weight, targets, upstream)
    out_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    assert fused[0].dtype == out_dtype
    assert fused[1].dtype == fused[2].dtype == hidden.dtype
    assert_no_worse_than_eager(fused, eager, truth, torch.finfo(hidden.dtype).eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(33, 40, 257), (5, 24, 300)], ids=lambda s: "N{}-d{}-V{}".format(*s))
@pytest.mark.parametrize("seed", [0, 1])
def test_low_precision_no_worse_than_eager(dtype, shape, seed):
    hidden, weight, targets, upstream = head_inputs(*_rows(shape), dtype=dtype, scale=2.0, seed=seed)
    _no_worse_than_eager(hidden, weight, targets, upstream, _direct)


def test_direct_call_rejects_mixed_dtypes():
    hidden, weight, targets, _ = head_inputs((3,), 8, 20, dtype=torch.float32)
    with pytest.raises(ValueError, match="share a dtype"):
        triton_linear_logprobs(hidden.bfloat16(), weight, targets, OPTS)


# --------------------------------------------------------------------------------------------------
# Through the front-end: ignore_index rows and batch dims
# --------------------------------------------------------------------------------------------------


def test_ignore_index_and_batch_dims():
    b, t, d, v = 2, 9, 24, 70
    hidden, weight, targets, upstream = head_inputs((b * t,), d, v, seed=6)
    targets[[1, 4, 5, 12, 17]] = -100  # scattered rows, including the very last one
    hidden3 = hidden.reshape(b, t, d)  # [B, T, d]
    targets2 = targets.reshape(b, t)  # [B, T]
    upstream2 = upstream.reshape(b, t)  # [B, T]

    h = hidden3.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    options = LinearLogprobsOptions(backend="triton", ignore_index=-100)
    value = linear_logprobs(h, w, targets2, options=options)  # [B, T]
    value.backward(upstream2)
    assert value.shape == (b, t) and value.dtype == torch.float64

    keep = targets != -100  # [B*T]
    ref, ref_h, ref_w = head_truth(hidden[keep], weight, targets[keep], upstream[keep])
    flat_value = value.detach().reshape(-1)
    flat_gh = h.grad.reshape(-1, d)
    assert (flat_value[~keep] == 0).all()
    assert (flat_gh[~keep] == 0).all()
    torch.testing.assert_close(flat_value[keep], ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(flat_gh[keep], ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(w.grad, ref_w, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Memory: no [N, V] tensor anywhere in forward + backward
# --------------------------------------------------------------------------------------------------


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (in bytes) any PyTorch op produces while active.

    Bytes, not elements: the interpreter moves kernel arguments around as uint8 views of storage.
    """

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel() * x.element_size())
        return out


@pytest.mark.parametrize("backend", ["naive", "triton"])
def test_never_allocates_rows_by_vocab(backend):
    n, d, v = 40, 8, 300  # N*V = 12000 dwarfs every legitimate tensor (the largest: weight, grad_weight, V*d = 2400)
    hidden, weight, targets, upstream = head_inputs((n,), d, v, dtype=torch.float32, seed=7)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    with _LargestTensor() as mode:
        value = linear_logprobs(h, w, targets, options=LinearLogprobsOptions(backend=backend))
        value.backward(upstream.float())
    if backend == "naive":
        assert mode.largest >= n * v * 4  # the probe does see a materialised float32 [N, V]
    else:
        assert mode.largest <= v * d * 4


# --------------------------------------------------------------------------------------------------
# CUDA: real kernels, realistic sizes (skipped without a GPU)
# --------------------------------------------------------------------------------------------------


@cuda
@needs_cuda
def test_cuda_bf16_realistic_no_worse_than_eager():
    n, d, v = 4096, 4096, 32000
    hidden, weight, targets, upstream = head_inputs((n,), d, v, dtype=torch.bfloat16, scale=2.0, seed=10, device="cuda")
    # Truth in float32 (IEEE, no TF32) on the GPU: float64 at this size is slow and its extra
    # accuracy is far below bf16 resolution.
    assert not torch.backends.cuda.matmul.allow_tf32
    h32 = hidden.float().requires_grad_()
    w32 = weight.float().requires_grad_()
    ref = torch.log_softmax(h32 @ w32.t(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [N]
    ref_h, ref_w = torch.autograd.grad(ref, (h32, w32), upstream.float())
    truth = (ref.detach().double(), ref_h.double(), ref_w.double())
    del h32, w32, ref, ref_h, ref_w
    fused = _run(_public, hidden, weight, targets, upstream)
    eager = _run(lambda h, w, t: linear_logprobs(h, w, t, options=NAIVE), hidden, weight, targets, upstream)
    assert_no_worse_than_eager(fused, eager, truth, torch.finfo(torch.bfloat16).eps)


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(1, 4096, 50257), (3, 1000, 5001), (1000, 77, 3001)], ids=str)
def test_cuda_ragged_shapes_no_worse_than_eager(dtype, shape):
    hidden, weight, targets, upstream = head_inputs(*_rows(shape), dtype=dtype, scale=2.0, seed=11, device="cuda")
    _no_worse_than_eager(hidden, weight, targets, upstream, _direct)


@cuda
@needs_cuda
def test_cuda_float64_and_gradcheck():
    hidden, weight, targets, upstream = head_inputs((37,), 70, 333, seed=12, device="cuda")
    value, grad_h, grad_w = _run(_direct, hidden, weight, targets, upstream)
    ref, ref_h, ref_w = head_truth(hidden, weight, targets, upstream)
    torch.testing.assert_close(value, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_h, ref_h, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_w, ref_w, rtol=0, atol=1e-12)
    h, w = hidden[:4, :9].clone().requires_grad_(), weight[:70, :9].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: triton_linear_logprobs(a, b, targets[:4] % 70, OPTS), (h, w))


@cuda
@needs_cuda
def test_cuda_peak_memory_far_below_logits():
    n, d, v = 8192, 2048, 65536
    hidden, weight, targets, upstream = head_inputs((n,), d, v, dtype=torch.bfloat16, seed=13, device="cuda")
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    value = linear_logprobs(h, w, targets, options=OPTS)
    value.backward(upstream.float())
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # Legitimate extras: grads (bf16) plus their float32 accumulators, O(N) vectors. Logits alone
    # would be N * V * 4 bytes = 2 GiB.
    allowed = (n * d + v * d) * (2 + 4) + 64 * n * 8 + (16 << 20)
    assert extra <= allowed, f"peak extra {extra / 2**20:.0f} MiB > {allowed / 2**20:.0f} MiB"
    assert extra < n * v * 4 / 4
