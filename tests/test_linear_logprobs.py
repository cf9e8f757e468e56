"""Tests of the linear_logprobs front-end and its ``naive`` and ``torch`` (chunked CPU) backends.

Every value and gradient is checked against a float64 truth computed here, independently of the code
under test: logits, an explicit max-shifted logsumexp, and the analytic gradients
    dL/dh_r = g_r * (W[t_r] - softmax_r @ W),    dL/dW = (onehot - softmax).T @ (g * h).
Low-precision results follow Cut Cross-Entropy's rule: no worse than eager PyTorch in the same dtype,
against the same float64 truth, plus a small tolerance. The Triton backend is tested in
tests/test_kernels_triton.py.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_no_worse_than_eager, head_inputs, head_truth

from lit_idpo.kernels import LinearLogprobsOptions, linear_logprobs, torch_chunked

BACKENDS = ["naive", "torch"]
FROZEN = ["none", "weight", "hidden"]  # which input does NOT require grad


def make_inputs(lead, d, vocab, dtype=torch.float64, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*lead, d, generator=gen, dtype=torch.float64) * scale
    weight = torch.randn(vocab, d, generator=gen, dtype=torch.float64) / max(d, 1) ** 0.5
    targets = torch.randint(0, vocab, tuple(lead), generator=gen)
    grad_out = torch.randn(*lead, generator=gen, dtype=torch.float64)
    return hidden.to(dtype), weight.to(dtype), targets, grad_out


def run(hidden, weight, targets, grad_out, frozen="none", **opts):
    """Fresh leaves; returns (logprobs, grad_hidden, grad_weight) of one forward+backward."""
    h = hidden.detach().clone().requires_grad_(frozen != "hidden")
    w = weight.detach().clone().requires_grad_(frozen != "weight")
    out = linear_logprobs(h, w, targets, options=LinearLogprobsOptions(**opts))
    out.backward(grad_out.to(out.dtype))
    return out, h.grad, w.grad


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


# ------------------------------------------------------------------------------ values and gradients
SHAPES = [
    # (leading shape, d, V, chunk_rows): odd on purpose
    ((1,), 3, 7, None),  # one row
    ((5,), 1, 11, 2),  # one feature; N not a multiple of chunk_rows
    ((13,), 4, 37, 4),  # V not a multiple of anything, last chunk of 1 row
    ((2, 3), 6, 50, 4),  # batch dims [B, T, d]
    ((2, 5, 3), 8, 129, 7),  # three leading dims
    ((40,), 16, 300, None),  # default chunking
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frozen", FROZEN)
@pytest.mark.parametrize("lead,d,vocab,chunk_rows", SHAPES)
def test_matches_float64_truth(backend, frozen, lead, d, vocab, chunk_rows):
    hidden, weight, targets, grad_out = make_inputs(lead, d, vocab)
    out, gh, gw = run(hidden, weight, targets, grad_out, frozen, backend=backend, chunk_rows=chunk_rows)
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    assert out.dtype == torch.float64 and out.shape == targets.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if frozen == "hidden":
        assert gh is None
    else:
        assert gh.shape == hidden.shape
        torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-10)
    if frozen == "weight":
        assert gw is None
    else:
        torch.testing.assert_close(gw, ref_gw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frozen", FROZEN)
def test_float32_close_to_truth(backend, frozen):
    hidden, weight, targets, grad_out = make_inputs((3, 7), 12, 203, dtype=torch.float32)
    out, gh, gw = run(hidden, weight, targets, grad_out, frozen, backend=backend, chunk_rows=5)
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    if gh is not None:
        assert gh.dtype == torch.float32
        torch.testing.assert_close(gh.double(), ref_gh, rtol=1e-4, atol=1e-5)
    if gw is not None:
        assert gw.dtype == torch.float32
        torch.testing.assert_close(gw.double(), ref_gw, rtol=1e-4, atol=1e-5)


def test_default_chunking_with_many_rows():
    # N above the largest default chunk, so the default splits into several chunks.
    hidden, weight, targets, grad_out = make_inputs((1100,), 3, 40)
    assert torch_chunked.default_chunk_rows(1100, 40) < 1100
    out, gh, gw = run(hidden, weight, targets, grad_out, backend="torch")
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-10, atol=1e-10)


def test_default_chunk_rows_heuristic():
    assert torch_chunked.default_chunk_rows(1, 49152) == 1  # never more rows than there are
    rows = torch_chunked.default_chunk_rows(10**6, 49152)
    assert rows % 64 == 0 and 128 <= rows <= 1024
    assert torch_chunked.default_chunk_rows(10**6, 128256) < rows  # larger vocab, fewer rows
    assert torch_chunked.default_chunk_rows(10**6, 49152, torch.float64) < rows  # wider dtype, fewer rows
    assert torch_chunked.default_chunk_rows(10**6, 10**7) == 128  # floor: matmuls get inefficient below


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_logits_stay_finite(backend):
    # Logits in the thousands: exp would overflow without the max shift.
    hidden, weight, targets, grad_out = make_inputs((9,), 4, 33, scale=3000.0)
    out, gh, gw = run(hidden, weight, targets, grad_out, backend=backend, chunk_rows=4)
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    assert torch.isfinite(out).all() and torch.isfinite(gh).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-7)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-9, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_grad_forward(backend):
    hidden, weight, targets, _ = make_inputs((6,), 5, 21, dtype=torch.float32)
    with torch.no_grad():
        out = linear_logprobs(hidden.requires_grad_(), weight.requires_grad_(), targets,
                              options=LinearLogprobsOptions(backend=backend))
    assert out.grad_fn is None and out.dtype == torch.float32
    ref = head_truth(hidden, weight, targets, torch.zeros(6))[0]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frozen", FROZEN)
def test_backward_twice_with_retain_graph(frozen):
    hidden, weight, targets, grad_out = make_inputs((7,), 4, 19)
    h = hidden.clone().requires_grad_(frozen != "hidden")
    w = weight.clone().requires_grad_(frozen != "weight")
    out = linear_logprobs(h, w, targets, options=LinearLogprobsOptions(backend="torch", chunk_rows=3))
    out.backward(grad_out, retain_graph=True)
    out.backward(grad_out)
    _, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    if h.grad is not None:
        torch.testing.assert_close(h.grad, 2 * ref_gh, rtol=1e-10, atol=1e-10)
    if w.grad is not None:
        torch.testing.assert_close(w.grad, 2 * ref_gw, rtol=1e-10, atol=1e-10)


def test_non_contiguous_inputs_and_int32_targets():
    hidden, weight, targets, grad_out = make_inputs((6,), 5, 23)
    h = hidden.T.contiguous().T.requires_grad_()  # column-major [N, d]
    w = weight.T.contiguous().T.requires_grad_()  # column-major [V, d]
    assert not h.is_contiguous() and not w.is_contiguous()
    out = linear_logprobs(h, w, targets.int(), options=LinearLogprobsOptions(backend="torch", chunk_rows=4))
    out.backward(grad_out)
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h.grad, ref_gh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w.grad, ref_gw, rtol=1e-10, atol=1e-10)


def test_mixed_dtypes_promote():
    # bf16 activations against an fp32 master weight: computed in fp32, gradients in each input's dtype.
    hidden, weight, targets, grad_out = make_inputs((5,), 8, 30)
    h = hidden.to(torch.bfloat16).requires_grad_()
    w = weight.float().requires_grad_()
    out = linear_logprobs(h, w, targets, options=LinearLogprobsOptions(backend="torch"))
    out.backward(grad_out.float())
    assert out.dtype == torch.float32 and h.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    ref = head_truth(h.detach(), weight, targets, grad_out)[0]
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frozen", FROZEN)
def test_gradcheck_float64(backend, frozen):
    hidden, weight, targets, _ = make_inputs((5,), 3, 7)
    h = hidden.requires_grad_(frozen != "hidden")
    w = weight.requires_grad_(frozen != "weight")
    opts = LinearLogprobsOptions(backend=backend, chunk_rows=2)
    assert torch.autograd.gradcheck(lambda a, b: linear_logprobs(a, b, targets, options=opts), (h, w))


# ------------------------------------------------------------------------------- low precision (CCE)
def eager(hidden, weight, targets, grad_out, frozen):
    """Plain PyTorch in the inputs' dtype (matmul in that dtype, log_softmax in float32)."""
    h = hidden.detach().clone().requires_grad_(frozen != "hidden")
    w = weight.detach().clone().requires_grad_(frozen != "weight")
    acc = torch.float64 if h.dtype == torch.float64 else torch.float32
    logits = (h @ w.T).to(acc)  # [N, V]
    out = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out.backward(grad_out.to(acc))
    return out, h.grad, w.grad


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2e-3), (torch.float16, 2e-3)])
@pytest.mark.parametrize("frozen", FROZEN)
@pytest.mark.parametrize("peaked", [False, True])
def test_low_precision_no_worse_than_eager(dtype, tol, frozen, peaked):
    # peaked=True: softmax close to one-hot on the target, where W_t - p @ W cancels; forming
    # (p - onehot) before any rounding keeps the hidden gradient as accurate as eager's.
    hidden, weight, targets, grad_out = make_inputs((96,), 48, 1000, dtype=torch.float64, seed=1)
    if peaked:
        targets = (hidden @ weight.T).argmax(dim=1)
        hidden = hidden * 8.0
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out)
    ours = run(hidden, weight, targets, grad_out, frozen, backend="torch", chunk_rows=32)
    base = eager(hidden, weight, targets, grad_out, frozen)
    for got, exp, want in zip(ours, base, (ref, ref_gh, ref_gw)):
        if want is None or exp is None:
            continue
        scale = want.abs().max().item()
        assert got.dtype == exp.dtype
        assert max_err(got, want) <= max_err(exp, want) + tol * scale, (max_err(got, want), max_err(exp, want))


BF16_SHAPES = [  # (leading shape, d, V, chunk_rows), odd on purpose
    ((1,), 8, 37, None),  # one row
    ((13,), 16, 129, 4),  # several chunks (the weight gradient sums chunk products), the last of one row
    ((2, 5, 3), 24, 300, 7),  # three leading dims
    ((64,), 32, 1001, None),  # one chunk: each gradient is one bf16 matmul, as eager's
]


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-inputs", "fp32-under-bf16-autocast"])
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
@pytest.mark.parametrize("frozen", FROZEN)
@pytest.mark.parametrize("lead,d,vocab,chunk_rows", BF16_SHAPES)
def test_bf16_no_worse_than_eager_bf16(lead, d, vocab, chunk_rows, frozen, peaked, autocast):
    # The CPU path in bf16 (bf16 logit and gradient matmuls, fp32 logsumexp): values, dH and dW against the
    # float64 truth, no worse than eager bf16 (bf16 logits, then log_softmax in fp32) plus the tolerance of the
    # Triton tests. Under autocast the inputs stay fp32 and their gradients come back in fp32.
    hidden, weight, targets, grad_out = head_inputs(lead, d, vocab, scale=2.0, seed=len(lead) + d)
    if peaked:  # target logit 12, p_t near 1: where rounding p before subtracting the one-hot would show
        w_t = weight[targets]
        hidden = w_t * (12.0 / (w_t * w_t).sum(-1, keepdim=True))
    dtype = torch.float32 if autocast else torch.bfloat16
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    truth = head_truth(hidden, weight, targets, grad_out)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ours = run(hidden, weight, targets, grad_out, frozen, backend="torch", chunk_rows=chunk_rows)
        base = eager(hidden, weight, targets, grad_out, frozen)
    assert ours[0].dtype == torch.float32
    assert all(g.dtype == dtype for g in ours[1:] if g is not None)
    assert_no_worse_than_eager(ours, base, truth, torch.finfo(torch.bfloat16).eps)


# ---------------------------------------------------------------------------------------- ignore_index
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ignore_index", [-100, 3])
def test_ignored_rows_are_zero_with_zero_grad(backend, ignore_index):
    hidden, weight, targets, grad_out = make_inputs((4, 5), 6, 17)
    targets[0, 1] = targets[2, :] = targets[3, 4] = ignore_index
    opts = dict(backend=backend, chunk_rows=3, ignore_index=ignore_index)
    out, gh, gw = run(hidden, weight, targets, grad_out, **opts)
    ref, ref_gh, ref_gw = head_truth(hidden, weight, targets, grad_out, ignore_index=ignore_index)
    ignored = targets == ignore_index
    assert (out[ignored] == 0).all() and (gh[ignored] == 0).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gh, ref_gh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, ref_gw, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_rows_ignored(backend):
    hidden, weight, _, grad_out = make_inputs((2, 3), 4, 9, dtype=torch.float32)
    targets = torch.full((2, 3), -100)
    out, gh, gw = run(hidden, weight, targets, grad_out, backend=backend)
    assert out.shape == (2, 3) and out.dtype == torch.float32 and (out == 0).all()
    assert gh is not None and (gh == 0).all() and gw is not None and (gw == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_input(backend):
    hidden = torch.randn(2, 0, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = linear_logprobs(hidden, weight, empty, options=LinearLogprobsOptions(backend=backend))
    assert out.shape == (2, 0) and out.dtype == torch.float32


# ----------------------------------------------------------------------------------------- dispatch
def test_auto_is_torch_on_cpu(monkeypatch):
    hidden, weight, targets, grad_out = make_inputs((11,), 5, 40, dtype=torch.float32)
    auto = run(hidden, weight, targets, grad_out, backend="auto", chunk_rows=4)
    explicit = run(hidden, weight, targets, grad_out, backend="torch", chunk_rows=4)
    for a, b in zip(auto, explicit):
        assert torch.equal(a, b)
    calls = []
    original = torch_chunked.torch_linear_logprobs
    monkeypatch.setattr(torch_chunked, "torch_linear_logprobs", lambda *a: calls.append(1) or original(*a))
    linear_logprobs(hidden, weight, targets)  # all defaults
    assert calls == [1]


# ------------------------------------------------------------------------------------------ bad input
def _args(**over):
    hidden, weight, targets, _ = make_inputs((2, 3), 4, 10, dtype=torch.float32)
    args = dict(hidden=hidden, weight=weight, targets=targets)
    args.update(over)
    return args


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_out_of_range_names_the_row(backend):
    targets = torch.tensor([[1, 2, 3], [4, 10, 5]])
    with pytest.raises(ValueError, match=r"V=10\).*flat row 4 has target 10"):
        linear_logprobs(**_args(targets=targets), options=LinearLogprobsOptions(backend=backend))
    targets = torch.tensor([[1, -1, 3], [4, 0, 5]])  # negative, and not ignore_index
    with pytest.raises(ValueError, match=r"flat row 1 has target -1"):
        linear_logprobs(**_args(targets=targets), options=LinearLogprobsOptions(backend=backend))


@pytest.mark.parametrize(
    "over,match",
    [
        (dict(hidden=torch.randn(2, 3, 5)),
         r"hidden's last dimension \(\(2, 3, 5\)\) must equal weight's hidden size d=4"),
        (dict(targets=torch.zeros(3, 2, dtype=torch.long)),
         r"targets shape \(3, 2\) must equal hidden's leading shape \(2, 3\)"),
        (dict(weight=torch.randn(10, 4, 1)), r"weight must be \[V, d\].*got shape \(10, 4, 1\)"),
        (dict(weight=torch.randn(10)), r"weight must be \[V, d\]"),
        (dict(hidden=torch.ones(2, 3, 4, dtype=torch.long)),
         r"hidden must be a floating-point tensor, got dtype torch.int64"),
        (dict(weight=torch.ones(10, 4, dtype=torch.int32)), r"weight must be a floating-point tensor"),
        (dict(targets=torch.zeros(2, 3)), r"targets must be an integer tensor \(int64\), got dtype torch.float32"),
        (dict(targets=[[0, 1, 2], [3, 4, 5]]), r"must all be torch.Tensor"),
        (dict(hidden=torch.randn(2, 3, 4, device="meta")), r"must be on one device, got meta, cpu, cpu"),
        (dict(weight=torch.randn(10, 4, device="meta")), r"must be on one device, got cpu, meta, cpu"),
    ],
)
def test_bad_input_raises(over, match):
    with pytest.raises(ValueError, match=match):
        linear_logprobs(**_args(**over))


def test_unknown_backend():
    choices = r"\('auto', 'naive', 'torch', 'triton'\)"
    with pytest.raises(ValueError, match=rf"unknown backend='cuda'; choose one of {choices}"):
        LinearLogprobsOptions(backend="cuda")


@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("chunk_rows", [0, -3, 2.5, True])
def test_bad_chunk_rows_fails_when_the_options_are_written(backend, chunk_rows):
    # Refused at construction for every backend, not only by the backend that reads it.
    with pytest.raises(ValueError, match=r"options.chunk_rows must be a positive int or None"):
        LinearLogprobsOptions(backend=backend, chunk_rows=chunk_rows)


@pytest.mark.parametrize("options", [dict(backend="cuda"), dict(ignore_index=-100.0), dict(ignore_index=None)])
def test_bad_options_are_refused_at_construction(options):
    with pytest.raises(ValueError, match=r"unknown backend='cuda'|options.ignore_index must be an int"):
        LinearLogprobsOptions(**options)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"needs the Triton interpreter; set TRITON_INTERPRET=1"):
        linear_logprobs(**_args(), options=LinearLogprobsOptions(backend="triton"))


# ------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("kwargs,match", [
    (dict(chunk_rows=4), r"unexpected keyword argument 'chunk_rows'"),
    (dict(backend="torch"), r"unexpected keyword argument 'backend'"),  # options travel in options= only
    (dict(options=dict(backend="torch")), r"options must be a LinearLogprobsOptions or None, got dict"),
])
def test_unknown_keyword_or_options_type_is_refused(kwargs, match):
    with pytest.raises(TypeError, match=match):
        linear_logprobs(**_args(), **kwargs)


# ------------------------------------------------------------------------------------------ autocast
def _autocast_run(hidden, weight, targets, grad_out, frozen, options, autocast):
    h = hidden.detach().clone().requires_grad_(frozen != "hidden")
    w = weight.detach().clone().requires_grad_(frozen != "weight")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = linear_logprobs(h, w, targets, options=options)
        out.backward(grad_out.to(out.dtype))  # backward inside the autocast region too
    return out.detach(), h.grad, w.grad


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("frozen", FROZEN)
def test_autocast_casts_inside_the_op(backend, frozen):
    # Under CPU bf16 autocast the op itself casts its float32 inputs to bf16 and runs its kernels with
    # autocast off, forward and backward: exactly the numbers of the op on bf16 inputs without autocast
    # (what mixed-precision training computes), with gradients in the inputs' own dtype.
    hidden, weight, targets, grad_out = make_inputs((4, 6), 16, 90, dtype=torch.float32, seed=2, scale=2.0)
    options = LinearLogprobsOptions(backend=backend, chunk_rows=5)
    got = _autocast_run(hidden, weight, targets, grad_out, frozen, options, autocast=True)
    low = _autocast_run(hidden.bfloat16(), weight.bfloat16(), targets, grad_out, frozen, options, autocast=False)
    full = _autocast_run(hidden, weight, targets, grad_out, frozen, options, autocast=False)
    assert got[0].dtype == torch.float32
    assert torch.equal(got[0], low[0])
    for g, g_low in zip(got[1:], low[1:]):
        assert (g is None) == (g_low is None)
        if g is not None:
            assert g.dtype == torch.float32 and torch.equal(g, g_low.float())
    # The bf16 path was really taken (float32 would be ~1e-6 from the truth), and is right to bf16 accuracy.
    ref = head_truth(hidden, weight, targets, grad_out)[0]
    assert max_err(got[0], full[0]) > 1e-4
    torch.testing.assert_close(got[0].double(), ref, rtol=0, atol=0.05)


def test_autocast_follows_autocasts_rules_for_mixed_and_float64_inputs():
    hidden, weight, targets, _ = make_inputs((7,), 8, 40, dtype=torch.float64, seed=3, scale=2.0)
    naive = LinearLogprobsOptions(backend="naive")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # bf16 activations, fp32 weight: both bf16 (outside autocast they would promote to fp32).
        mixed = linear_logprobs(hidden.bfloat16(), weight.float(), targets, options=naive)
        # float64 is never cast by autocast, so neither is it here.
        wide = linear_logprobs(hidden, weight, targets, options=naive)
    assert torch.equal(mixed, linear_logprobs(hidden.bfloat16(), weight.bfloat16(), targets, options=naive))
    assert wide.dtype == torch.float64 and torch.equal(wide, linear_logprobs(hidden, weight, targets, options=naive))
